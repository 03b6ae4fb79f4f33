"""The starter zoo: recipes that turn the real labelled images of a data folder into small task models.

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
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from . import atomic
from .bundle import BODY_REGIONS, MODALITIES, ModelCard, read_metadata, validate_bundle, write_card
from .errors import DatasetError, ModelSelectorError
from .progress import check_cancel, progress_bar

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

    @property
    def spatial_dims(self) -> int:
        return len(self.train["roi_size"])

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
        return self


# --- case lists -----------------------------------------------------------------------------------------
def _fixed(train: Sequence[Case], val: Sequence[Case] = (), check: Sequence[Case] = ()) -> Callable:
    def cases(root: Path, seed: int) -> CaseSplit:
        return CaseSplit(tuple(train), tuple(val), tuple(check))

    return cases


def _acdc_cases(n_train: int, n_val: int) -> Callable[[Path, int], CaseSplit]:
    """ACDC patients by the source repository's split (``cases.csv``): first ``n_train`` of its training
    patients, first ``n_val`` of its validation patients; one frame (ED) per patient, so the split is by
    patient."""

    def cases(root: Path, seed: int) -> CaseSplit:
        table = root / "acdc_cardiac_mr" / "cases.csv"
        if not table.is_file():
            raise DatasetError(f"{table}: missing; the cardiac recipe needs the ACDC case table.")
        with open(table, newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: r["case"])
        pick: dict[str, list[Case]] = {"train": [], "val": []}
        for r in rows:
            split = r.get("source_repo_split", "")
            if split in pick:
                pick[split].append(
                    Case(r["case"], f"acdc_cardiac_mr/{r['image']}", f"acdc_cardiac_mr/{r['label']}")
                )
        return CaseSplit(tuple(pick["train"][:n_train]), tuple(pick["val"][:n_val]))

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


# --- the recipes ----------------------------------------------------------------------------------------
_TS = "totalsegmentator"
_TS_LICENCE = ("CC-BY-4.0 (TotalSegmentator dataset images and label maps; cite Wasserthal et al., Radiology: AI "
               "2023); files from the TotalSegmentator repository, Apache-2.0")  # fmt: skip
_TS_PROVENANCE = ("TotalSegmentator v2 model output (the repository's reference test results), not manual "
                  "ground truth")  # fmt: skip
_PYRAD_LICENCE = ("BSD-3-Clause (pyradiomics repository, Harvard Medical School); images are public sample "
                  "cases whose upstream data terms are not verified")  # fmt: skip
_UNET_S = (8, 16, 32, 64)
_UNET_M = (16, 32, 64, 128)


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
        cases=_fixed(
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
        cases=_fixed(
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
        cases=_fixed(
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
        name="mr-brain-tumour",
        version="1.0.0",
        modality="MR",
        body_region="HEAD",
        labels=(
            LabelSpec(
                1,
                "Brain tumour",
                (0.56, 0.93, 0.56),
                terminology(ALTERED, ("SCT", "108369006", "Neoplasm"), region=("SCT", "12738006", "Brain")),
            ),
        ),  # fmt: skip
        cases=_fixed(
            [Case("pyradiomics_brain1", "pyradiomics/brain1_image.nii.gz", "pyradiomics/brain1_label.nii.gz")]
        ),
        train={
            "channels": _UNET_S,
            "roi_size": (96, 96, 16),
            "target_spacing": (1.5, 1.5, 6.5),
            "intensity": "mr",
            "epochs": 150,
            "lr": 2e-3,
            "batch_size": 1,
            "num_samples": 4,
        },  # fmt: skip
        provenance="manual tumour ROI of the pyradiomics test data",
        source="pyradiomics sample brain1 (3D Slicer MRBrainTumor sample, T1-weighted, likely post-contrast); one case",
        licence=_PYRAD_LICENCE,
        intended_input="axial T1-weighted brain MR; resampled to 1.5 x 1.5 x 6.5 mm",
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
        cases=_fixed(
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
        version="1.0.0",
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
        cases=_acdc_cases(16, 4),
        train={
            "channels": _UNET_S,
            "roi_size": (96, 96, 8),
            "target_spacing": (1.5, 1.5, 10.0),
            "intensity": "mr",
            "epochs": 60,
            "augment": False,  # at 60 epochs augmentation costs Dice (0.37 vs 0.65 held out), even unmirrored
            "lr": 2e-3,
            "batch_size": 2,
            "num_samples": 2,
        },  # fmt: skip
        provenance="manual ACDC ground truth (RV cavity, LV myocardium, LV cavity), end-diastolic frame",
        source="ACDC challenge cine short-axis MR (h5 export of antares0811/3DCardiac); split by patient as in that "
        "repository (train / val); voxel spacing 1.5 x 1.5 x 10 mm is nominal (the export has no geometry)",
        licence="ACDC challenge training data (Bernard et al., IEEE TMI 2018): research use under the challenge's "
        "terms, not verified here; export repository antares0811/3DCardiac, Apache-2.0 (code)",
        intended_input="cine bSSFP short-axis cardiac MR stack; resampled to 1.5 x 1.5 x 10 mm",
    ),
)


@dataclasses.dataclass(frozen=True)
class LandmarkRecipe:
    """How the starter zoo's chest X-ray landmark model is made: the student variant and label fraction that
    won the comparison of ``docs/landmarks`` (:mod:`ModelSelectorLib.landmarks_compare`), trained with that
    comparison's settings on its split of the landmark images, with the build's seed.

    Attributes:
        name, version: model name and version in the zoo.
        variant: one of :data:`~ModelSelectorLib.landmarks.VARIANTS`.
        fraction: labelled share of the training images (the rest and ``cxr_unlabelled/`` are unlabelled).
        grid: :class:`~ModelSelectorLib.landmarks_compare.GridConfig` settings: split seed, landmark schema and
            the ``train`` block (the same as ``docs/landmarks/grid.yaml``).
        n_exemplars: training images used as exemplar prototypes.
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

    @property
    def licence(self) -> str:
        from .landmarks_compare import TRAINING_DATA_LICENCE

        return TRAINING_DATA_LICENCE

    def grid_config(self) -> Any:
        from .landmarks_compare import GridConfig

        return GridConfig.from_dict(self.grid)

    def split(self, data_root: PathLike, seed: int = 0) -> dict[str, list[str]]:
        """``{"train", "val", "test", "labelled", "unlabelled"}`` image ids: the comparison's split, the training
        images that keep their labels with ``seed``, and the extra unlabelled pool."""
        from . import landmarks as L

        cfg = self.grid_config()
        labelled, unlabelled = L.find_landmark_folders(data_root)
        split = L.split_cases([p.stem for p in labelled], cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
        return {**split, "labelled": L.labelled_subset(split["train"], self.fraction, seed),
                "unlabelled": [p.stem for p in unlabelled]}  # fmt: skip

    def cases(self, data_root: PathLike, ids: Sequence[str]) -> list[dict[str, str]]:
        """``{"id", "image", "label"}`` of labelled images ``ids``, paths relative to ``data_root``."""
        from .landmarks import find_landmark_folders

        root = Path(data_root)
        by_id = {p.stem: p for p in find_landmark_folders(root)[0]}
        return [{"id": i, "image": str(by_id[i].relative_to(root)),
                 "label": str(by_id[i].with_name(i + "_landmarks.json").relative_to(root))} for i in ids]  # fmt: skip

    def files(self, data_root: PathLike) -> list[Path]:
        """Every image and landmark file the model learns from or is scored on."""
        from . import landmarks as L

        labelled, unlabelled = L.find_landmark_folders(data_root)
        return [f for p in labelled for f in (p, p.with_name(p.stem + "_landmarks.json"))] + list(unlabelled)


#: the chest X-ray landmark model: the student with the lowest mean validation error in ``docs/landmarks``
LANDMARK_RECIPES: tuple[LandmarkRecipe, ...] = (
    LandmarkRecipe(
        name="dx-chest-landmarks",
        version="1.0.0",
        variant="uncertainty_kd",
        fraction=1.0,
        grid={
            "split_seed": 20261124,
            "train": {
                "size": 64,
                "sigma": 1.5,
                "steps": 400,
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
                "threads": 1,
            },
        },  # fmt: skip
    ),
)

AnyRecipe = Union[Recipe, LandmarkRecipe]


def recipes(only: Optional[Sequence[str]] = None) -> list[AnyRecipe]:
    """The recipes (segmentation, then landmarks), all or those named in ``only`` (in table order).

    Raises:
        ModelSelectorError: an unknown name (the message lists the known ones).
    """
    every: list[AnyRecipe] = [*RECIPES, *LANDMARK_RECIPES]
    if not only:
        return every
    known = [r.name for r in every]
    bad = [n for n in only if n not in known]
    if bad:
        raise ModelSelectorError(f"unknown starter-zoo model(s) {', '.join(bad)}; known: {', '.join(known)}.")
    return [r for r in every if r.name in set(only)]


# --- hashing --------------------------------------------------------------------------------------------
def _file_fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, int(st.st_size)]


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
    text = json.dumps(blob, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def landmark_recipe_hash(recipe: LandmarkRecipe, data_root: Path, seed: int) -> str:
    """SHA-256 (16 hex digits) of a landmark recipe, its source files (names and sizes) and the seed."""
    blob = {
        "format": RECIPE_FORMAT, "recipe": dataclasses.asdict(recipe), "licence": recipe.licence,
        "files": [_file_fingerprint(f) for f in recipe.files(data_root)], "seed": int(seed),
    }  # fmt: skip
    text = json.dumps(blob, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- data preparation -----------------------------------------------------------------------------------
def remap_labels(array: np.ndarray, labels: Sequence[LabelSpec]) -> np.ndarray:
    """Source label map -> uint8 map with values ``0..K``.

    A label with ``source_values`` takes the voxels holding any of them; one without takes every non-zero
    voxel (binary masks in 0/1 or 0/255). Voxels of no listed value become background.
    """
    out = np.zeros(array.shape, np.uint8)
    for lb in labels:
        mask = np.isin(array, lb.source_values) if lb.source_values else array > 0
        out[mask] = lb.value
    return out


def _check_paths(data_root: Path, split: CaseSplit, recipe: Recipe) -> None:
    missing = [str(data_root / p) for part in (split.train, split.val, split.check) for c in part
               for p in (c.image, c.label) if not (data_root / p).is_file()]  # fmt: skip
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(
            f"recipe {recipe.name}: {len(missing)} source file(s) missing under {data_root}: {shown}; pass the "
            "shared data folder with --data (e.g. ../shared/data)."
        )
    if not split.train:
        raise DatasetError(f"recipe {recipe.name}: no training cases found under {data_root}.")


def _convert_case(
    data_root: Path, case: Case, recipe: Recipe, out_dir: Path, part: str = "Tr"
) -> dict[str, str]:
    """Write ``images{part}/ID.nii.gz`` and ``labels{part}/ID.nii.gz``; the label takes the image's geometry."""
    from .io import read_image, write_image

    image = read_image(data_root / case.image)
    if image.is_multicomponent:
        image = image.to_grayscale()
    label = read_image(data_root / case.label, check_content=False)
    if label.is_multicomponent:
        label = label.to_grayscale()
    if label.size != image.size:
        raise DatasetError(
            f"{data_root / case.label}: size {label.size} differs from its image's {image.size}."
        )
    lab = image.with_array(remap_labels(np.asarray(label.array), recipe.labels))
    if not np.any(lab.array):
        raise DatasetError(f"{data_root / case.label}: none of the recipe's labels occurs in it.")
    img_rel, lab_rel = f"images{part}/{case.id}.nii.gz", f"labels{part}/{case.id}.nii.gz"
    for sub in (f"images{part}", f"labels{part}"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    write_image(image, out_dir / img_rel)
    write_image(lab, out_dir / lab_rel)
    return {"image": img_rel, "label": lab_rel}


def _arrange(train: list[Any], val: list[Any], seed: int) -> tuple[list[Any], float]:
    """Order ``train + val`` so that :func:`ModelSelectorLib.train.split_cases` with the returned fraction
    and ``seed`` holds out exactly ``val``."""
    from .train import split_cases

    n = len(train) + len(val)
    fraction = len(val) / n if val else 0.0
    if not val:
        return list(train), 0.0
    _, val_idx = split_cases(n, fraction, seed)
    if len(val_idx) != len(val):
        raise ModelSelectorError(f"cannot hold out {len(val)} of {n} cases with the training split.")
    slots: list[Any] = [None] * n
    for i, item in zip(val_idx, val):
        slots[i] = item
    rest = iter(train)
    return [s if s is not None else next(rest) for s in slots], fraction


def prepare_dataset(recipe: Recipe, data_root: PathLike, out_dir: PathLike, seed: int = 0) -> dict[str, Any]:
    """Turn a recipe's source files into an MSD folder ``out_dir`` (``dataset.json``, ``imagesTr``, ``labelsTr``).

    The training list holds training and validation cases, ordered so that
    :func:`~ModelSelectorLib.train.train_segmentation` with ``val_fraction`` from the returned dict and
    ``seed`` holds out exactly the recipe's validation cases. Check cases go to ``imagesTs``/``labelsTs``.

    Returns:
        ``{"root": Path, "split": CaseSplit, "val_fraction": float, "hash": str, "check": [{image, label}]}``.

    Raises:
        DatasetError: missing source files, label and image sizes differ, or a label map lacks every label.
    """
    root, out = Path(data_root), Path(out_dir)
    split = recipe.cases(root, seed)
    _check_paths(root, split, recipe)
    digest = recipe_hash(recipe, split, root, seed)
    stamp = out / ".recipe_hash"
    if out.is_dir() and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        data = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        return {"root": out, "split": split, "val_fraction": data["val_fraction"], "hash": digest,
                "check": data.get("check", [])}  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=str(out.parent) if out.parent.is_dir() else None))
    try:
        train = [_convert_case(root, c, recipe, tmp) for c in split.train]
        val = [_convert_case(root, c, recipe, tmp) for c in split.val]
        check = [_convert_case(root, c, recipe, tmp, "Ts") for c in split.check]
        ordered, fraction = _arrange(train, val, seed)
        meta = {
            "name": recipe.name, "description": recipe.source, "reference": recipe.provenance,
            "licence": recipe.licence, "tensorImageSize": f"{recipe.spatial_dims}D",
            "modality": {"0": recipe.modality}, "body_region": recipe.body_region,
            "labels": {"0": "background", **{str(lb.value): lb.name for lb in recipe.labels}},
            "colors": {str(lb.value): list(lb.color) for lb in recipe.labels},
            "terminology": {str(lb.value): lb.terminology for lb in recipe.labels},
            "numTraining": len(ordered), "training": ordered, "val_fraction": fraction,
            "validation_cases": [c.id for c in split.val], "check": check, "recipe_hash": digest,
        }  # fmt: skip
        atomic.write_json(tmp / "dataset.json", meta)
        (tmp / ".recipe_hash").write_text(digest + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": out, "split": split, "val_fraction": fraction, "hash": digest, "check": check}


# --- training -------------------------------------------------------------------------------------------
def train_config(recipe: Recipe, seed: int, val_fraction: float, num_threads: Optional[int] = None,
                 epochs_scale: float = 1.0) -> Any:  # fmt: skip
    """The recipe's :class:`~ModelSelectorLib.train.TrainConfig`; validation runs once, after the last epoch,
    so the held-out figure is that of the saved weights (no choice of epoch on the held-out cases)."""
    from .train import TrainConfig

    settings = dict(recipe.train)
    epochs = max(1, int(round(settings.pop("epochs", 20) * epochs_scale)))
    return TrainConfig(**settings, epochs=epochs, val_interval=epochs, val_fraction=val_fraction, seed=int(seed),
                       version=recipe.version, num_threads=num_threads, license=recipe.licence)  # fmt: skip


def dice_per_label(pred: np.ndarray, truth: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    """Dice of each label value between two label maps of equal shape (1.0 when both lack the label)."""
    out = {}
    for v in values:
        p, t = pred == v, truth == v
        denom = int(p.sum()) + int(t.sum())
        out[int(v)] = 1.0 if denom == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denom
    return out


def external_check(bundle_dir: Path, msd_root: Path, check: Sequence[dict[str, str]]) -> dict[str, float]:
    """Mean Dice per label of the bundle on the check cases, each applied in its own geometry
    (:func:`~ModelSelectorLib.infer.apply_model`)."""
    from .bundle import load_bundle
    from .infer import apply_model
    from .io import read_image

    loaded = load_bundle(bundle_dir)
    values = [int(lb["value"]) for lb in loaded.card.labels]
    scores: dict[int, list[float]] = {v: [] for v in values}
    for entry in check:
        image = read_image(msd_root / entry["image"])
        truth = read_image(msd_root / entry["label"], check_content=False).array
        pred = apply_model(loaded, image).array
        for v, d in dice_per_label(pred, truth, values).items():
            scores[v].append(d)
    return {str(v): float(np.mean(s)) for v, s in scores.items()}


def _complete_card(
    card: ModelCard, recipe: Recipe, split: CaseSplit, ext: Optional[dict[str, float]]
) -> ModelCard:
    """The card with provenance, held-out cases and an honest metric block."""
    metrics = dict(card.validation_metrics)
    names = {str(lb.value): lb.name for lb in recipe.labels}
    if split.val:
        metrics["validation_cases"] = ", ".join(c.id for c in split.val)
    else:  # train.py validated on the training case: report it as such
        metrics = {"validation": "none: single case",
                   **{f"training_{k}": v for k, v in metrics.items() if k.startswith("dice")}}  # fmt: skip
    if ext:
        metrics["external_dice"] = round(float(np.mean(list(ext.values()))), 4)
        for v, d in ext.items():
            if len(ext) > 1:
                metrics[f"external_dice_{names.get(v, v)}"] = round(d, 4)
        metrics["external_cases"] = recipe.check_name or ", ".join(c.id for c in split.check)
    val_text = (
        ", ".join(c.id for c in split.val) or "none (single case; the Dice reported is on the training case)"
    )
    training_data = (f"{recipe.source}. Labels: {recipe.provenance}. Training cases ({len(split.train)}): "
                     f"{', '.join(c.id for c in split.train)}. Held-out validation: {val_text}.")  # fmt: skip
    return ModelCard.from_dict({**card.to_dict(), "validation_metrics": metrics, "training_data": training_data,
                                "license": recipe.licence})  # fmt: skip


def _recipe_block(recipe: Recipe, prep: dict[str, Any], seed: int, seconds: float) -> dict[str, Any]:
    split: CaseSplit = prep["split"]
    return {
        "recipe": recipe.name, "recipe_hash": prep["hash"], "seed": int(seed),
        "label_provenance": recipe.provenance, "licence": recipe.licence, "source": recipe.source,
        "intended_input": recipe.intended_input,
        "training_cases": [dataclasses.asdict(c) for c in split.train],
        "validation_cases": [dataclasses.asdict(c) for c in split.val],
        "check_cases": [dataclasses.asdict(c) for c in split.check],
        "build_time_s": round(seconds, 1),
    }  # fmt: skip


def built_hash(zoo: Any, name: str) -> Optional[str]:
    """The recipe hash recorded in the current bundle of ``name`` in ``zoo`` (``None`` if absent)."""
    if name not in zoo:
        return None
    try:
        block = read_metadata(zoo.get(name)).get(METADATA_KEY) or {}
    except ModelSelectorError:
        return None
    return block.get("recipe_hash")


def _install(zoo: Any, name: str, bundle: Path, block: dict[str, Any], cancel: Optional[Any]) -> None:
    """Record ``block`` under ``"starter_zoo"`` in the bundle's ``metadata.json``, then put the bundle in
    ``zoo`` in place of model ``name``'s current one."""
    meta = read_metadata(bundle)
    meta[METADATA_KEY] = block
    atomic.write_json(bundle / "configs" / "metadata.json", meta)
    check_cancel(cancel)
    if name in zoo:
        zoo.remove(name)
    zoo.add(bundle)
    zoo.reload()


def build_model(
    recipe: Recipe,
    data_root: PathLike,
    zoo_dir: PathLike,
    work_dir: PathLike,
    seed: int = 0,
    num_threads: Optional[int] = None,
    epochs_scale: float = 1.0,
    force: bool = False,
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Prepare, train and add one recipe's model to the zoo ``zoo_dir`` (created if missing).

    Returns:
        ``{"name", "status": "built"|"skipped", "path", "metrics", "seconds"}``.
    """
    from .train import train_segmentation
    from .zoo import Zoo

    t0 = time.monotonic()
    zoo = Zoo.create(zoo_dir)
    prep = prepare_dataset(recipe.check(), data_root, Path(work_dir) / recipe.name, seed)
    if not force and built_hash(zoo, recipe.name) == prep["hash"]:
        return {"name": recipe.name, "status": "skipped", "path": zoo.get(recipe.name),
                "metrics": zoo.card(recipe.name).validation_metrics, "seconds": 0.0}  # fmt: skip
    config = train_config(recipe, seed, prep["val_fraction"], num_threads, epochs_scale)
    with tempfile.TemporaryDirectory(prefix="modelselector-starter-") as tmp:
        scratch = train_segmentation(prep["root"], recipe.name, Path(tmp) / "zoo", config, modality=recipe.modality,
                                     body_region=recipe.body_region, cancel=cancel)  # fmt: skip
        check_cancel(cancel)
        ext = external_check(scratch, prep["root"], prep["check"]) if prep["check"] else None
        card = _complete_card(validate_bundle(scratch), recipe, prep["split"], ext)
        bundle = Path(tmp) / "bundle"
        shutil.copytree(scratch, bundle)
        write_card(bundle, card)
        _install(zoo, recipe.name, bundle, _recipe_block(recipe, prep, seed, time.monotonic() - t0), cancel)
    return {"name": recipe.name, "status": "built", "path": zoo.get(recipe.name), "metrics": card.validation_metrics,
            "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


def build_landmark_model(
    recipe: LandmarkRecipe,
    data_root: PathLike,
    zoo_dir: PathLike,
    seed: int = 0,
    force: bool = False,
    cancel: Optional[Any] = None,
) -> dict[str, Any]:
    """Train the landmark recipe's variant (:func:`ModelSelectorLib.landmarks_compare.train_into_zoo`), score
    it on the comparison's validation and test images, and add it to the zoo ``zoo_dir``.

    Returns:
        ``{"name", "status": "built"|"skipped", "path", "metrics", "seconds"}``.
    """
    from .landmarks_compare import train_into_zoo
    from .zoo import Zoo

    t0 = time.monotonic()
    root = Path(data_root)
    zoo = Zoo.create(zoo_dir)
    digest = landmark_recipe_hash(recipe, root, seed)
    if not force and built_hash(zoo, recipe.name) == digest:
        return {"name": recipe.name, "status": "skipped", "path": zoo.get(recipe.name),
                "metrics": zoo.card(recipe.name).validation_metrics, "seconds": 0.0}  # fmt: skip
    split = recipe.split(root, seed)
    with tempfile.TemporaryDirectory(prefix="modelselector-starter-") as tmp:
        train_into_zoo(root, Path(tmp) / "zoo", recipe.grid_config(), name=recipe.name, version=recipe.version,
                       variant=recipe.variant, fraction=recipe.fraction, seed=seed, cancel=cancel)  # fmt: skip
        bundle = Path(tmp) / "bundle"
        shutil.copytree(Zoo(Path(tmp) / "zoo").get(recipe.name), bundle)
        block = {
            "recipe": recipe.name, "recipe_hash": digest, "seed": int(seed), "variant": recipe.variant,
            "label_fraction": recipe.fraction, "label_provenance": recipe.provenance, "licence": recipe.licence,
            "source": recipe.source, "intended_input": recipe.intended_input,
            "training_cases": recipe.cases(root, split["labelled"]),
            "unlabelled_cases": len(split["train"]) - len(split["labelled"]) + len(split["unlabelled"]),
            "validation_cases": recipe.cases(root, split["val"]), "check_cases": recipe.cases(root, split["test"]),
            "build_time_s": round(time.monotonic() - t0, 1),
        }  # fmt: skip
        _install(zoo, recipe.name, bundle, block, cancel)
    return {"name": recipe.name, "status": "built", "path": zoo.get(recipe.name),
            "metrics": zoo.card(recipe.name).validation_metrics, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


# --- prototypes and index -------------------------------------------------------------------------------
def exemplar_images(recipe: AnyRecipe, data_root: PathLike, seed: int = 0) -> list[Path]:
    """Paths of the recipe's exemplar inputs: ``n_exemplars`` (labelled) training images."""
    if isinstance(recipe, LandmarkRecipe):
        from .landmarks import find_landmark_folders

        keep = recipe.split(data_root, seed)["labelled"]
        chosen = set(keep[:: max(1, len(keep) // recipe.n_exemplars)][: recipe.n_exemplars])  # across sources
        return [p for p in find_landmark_folders(data_root)[0] if p.stem in chosen]
    split = recipe.cases(Path(data_root), seed)
    return [Path(data_root) / c.image for c in split.train[: recipe.n_exemplars]]


def build_prototypes(
    recipe: AnyRecipe, data_root: PathLike, zoo_dir: PathLike, seed: int = 0, data_free: int = 4
) -> Any:
    """Exemplar (training inputs) and data-free prototypes of one model, via :mod:`ModelSelectorLib.prototypes`."""
    from . import prototypes
    from .zoo import Zoo

    zoo = Zoo(zoo_dir)
    exemplars = exemplar_images(recipe, data_root, seed)
    return prototypes.generate_for_model(
        zoo, recipe.name, exemplars=exemplars, data_free=data_free, seed=seed
    )


def build_index(zoo_dir: PathLike) -> Path:
    """One index over every model of the zoo, saved to ``ZOO/index``."""
    from . import index
    from .zoo import Zoo

    out = Path(zoo_dir) / INDEX_DIR
    index.build_index(Zoo(zoo_dir)).save(out)
    return out


def build_starter_zoo(
    data_root: PathLike,
    zoo_dir: PathLike,
    only: Optional[Sequence[str]] = None,
    seed: int = 0,
    stages: Sequence[str] = STAGES,
    work_dir: Optional[PathLike] = None,
    num_threads: Optional[int] = None,
    epochs_scale: float = 1.0,
    data_free: int = 4,
    force: bool = False,
    cancel: Optional[Any] = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Build (or resume building) the starter zoo from the data folder.

    Args:
        data_root: the shared data folder (``../shared/data``).
        zoo_dir: output zoo (``Resources/zoo``).
        only: model names to build (default all).
        seed: seed of splits, weights and patches.
        stages: any of ``train``, ``prototypes``, ``index``, run in that order.
        work_dir: where the MSD folders are written (default: a temporary folder, removed afterwards).
        num_threads: torch CPU threads during training.
        epochs_scale: multiply every recipe's epochs (quick trial builds).
        data_free: data-free prototypes per model.
        force: retrain models whose recipe hash is unchanged.
        cancel: Event-like; stops between and inside models.
        log: receives one line per finished step.

    Returns:
        one result dict per model trained or skipped.
    """
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ModelSelectorError(f"unknown stage(s) {', '.join(bad)}; use {', '.join(STAGES)}.")
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder; pass the shared data folder with --data.")
    chosen = recipes(only)
    results: list[dict[str, Any]] = []
    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="modelselector-starter-work-")) if own_work else Path(work_dir)
    try:
        if "train" in stages:
            bar = progress_bar(chosen, total=len(chosen), desc="starter zoo: train")
            for recipe in bar:
                check_cancel(cancel)
                bar.set_description(f"starter zoo: {recipe.name}")
                if isinstance(recipe, LandmarkRecipe):
                    res = build_landmark_model(recipe, root, zoo_dir, seed, force, cancel)
                else:
                    res = build_model(
                        recipe, root, zoo_dir, work, seed, num_threads, epochs_scale, force, cancel
                    )
                results.append(res)
                log(
                    f"{res['status']:>7} {recipe.name} ({res['seconds']:.0f} s) {_metric_text(res['metrics'])}"
                )
            bar.close()
        if "prototypes" in stages:
            bar = progress_bar(chosen, total=len(chosen), desc="starter zoo: prototypes")
            for recipe in bar:
                check_cancel(cancel)
                t0 = time.monotonic()
                build_prototypes(recipe, root, zoo_dir, seed, data_free)
                log(f"prototypes {recipe.name} ({time.monotonic() - t0:.0f} s)")
            bar.close()
        if "index" in stages:
            check_cancel(cancel)
            log(f"index {build_index(zoo_dir)}")
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return results


def summary_table(zoo_dir: PathLike) -> str:
    """A Markdown table of the zoo's starter models: modality, region, labels, cases, metrics, provenance,
    licence and build time, read from the bundles' cards (what ``docs/starter-zoo.md`` shows)."""
    from .zoo import Zoo

    zoo = Zoo(zoo_dir)
    lines = [
        "| model | modality | region | dims | labels | training cases | held-out validation (Dice) | external check "
        "(Dice) | label provenance | licence | build time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in zoo.names():
        path = zoo.get(name)
        card = validate_bundle(path)
        block = read_metadata(path).get(METADATA_KEY) or {}
        m = card.validation_metrics
        labels = ", ".join(card.label_names)
        if card.task_type == "landmarks":
            labels = f"{len(card.labels)} landmarks"
            val = (f"MRE {m.get('val_mre_mm', float('nan')):.2f} mm on {len(block.get('validation_cases', []))} "
                   f"images (test: {m.get('test_mre_mm', float('nan')):.2f} mm on {len(block.get('check_cases', []))})")  # fmt: skip
        elif "dice" in m:
            per = ", ".join(f"{k[5:]} {v:.2f}" for k, v in m.items() if k.startswith("dice_"))
            val = f"{m['dice']:.3f} on {m.get('validation_cases', '?')}" + (f" ({per})" if per else "")
        else:
            val = f"none: single case (training Dice {m.get('training_dice', float('nan')):.3f})"
        ext = f"{m['external_dice']:.3f} on {m.get('external_cases', '?')}" if "external_dice" in m else "-"
        lines.append(
            f"| {name} | {card.modality} | {card.body_region} | {card.spatial_dims}D | {labels} "
            f"| {card.n_training_cases} | {val} | {ext} | {block.get('label_provenance', '-')} | {card.license} "
            f"| {block.get('build_time_s', '-')} |"
        )
    return "\n".join(lines) + "\n"


def _metric_text(metrics: dict[str, Any]) -> str:
    keys = ("dice", "training_dice", "external_dice", "val_mre_mm", "test_mre_mm")
    return " ".join(f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), (int, float)))


__all__ = [
    "LANDMARK_RECIPES", "RECIPES", "STAGES", "Case", "CaseSplit", "LabelSpec", "LandmarkRecipe", "Recipe",
    "build_index", "build_landmark_model", "build_model", "build_prototypes", "build_starter_zoo", "prepare_dataset", "recipe_hash", "recipes", "remap_labels",
    "terminology",
]  # fmt: skip
