"""The MONAI inference workflow of a segmentation bundle: what ``python -m monai.bundle run`` runs.

Besides the network, a segmentation bundle's ``configs/inference.json`` holds MONAI's standard inference
workflow, laid out as in the bundles of the MONAI Model Zoo. The workflow runs in this order:
1. ``dataset_dir`` gives the ``datalist``;
2. a ``Dataset`` applies the ``preprocessing``;
3. a ``SupervisedEvaluator`` runs the ``inferer`` with the weights that ``CheckpointLoader`` reads from
   ``models/model.pt``;
4. the ``postprocessing`` inverts the preprocessing on the class probabilities (back onto each input's grid),
   takes the argmax, keeps the largest components where the card says so, and writes one label file per input
   to ``output_dir``.

Test-time mirroring has no MONAI class; where the card asks for it, the ``inferer`` is a short expression that
averages the softmax over the mirrored inputs, as the task runtime does. ModelSelector itself never evaluates
these sections (:mod:`~ModelSelectorLib.zoo.trust`). They are for people who run the bundle with MONAI's own
tools (``itk`` reads the NRRD and MHA inputs the datalist picks up, :data:`DATASET_PATTERNS`; nibabel reads
NIfTI, pillow/skimage PNG)::

    pip install "monai[fire,ignite,nibabel,skimage,itk]"
    python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir IMAGES \
        --output_dir OUT
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: the input files the workflow picks up in ``dataset_dir`` (NRRD and MHA need the ``itk`` extra of the install line)
DATASET_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.png")


def mirrored_inferer(window: dict[str, Any], flips: Sequence[Sequence[int]]) -> dict[str, Any]:
    """``inference.json`` items for test-time mirroring, which has no MONAI class: ``window`` (the sliding-window
    inferer), ``mirror_dims`` (the ``flips``, network-grid axes, as dimensions of a batch) and an ``inferer``
    that averages the softmax of ``window`` over the input flipped along each, each result flipped back, as
    :func:`~ModelSelectorLib.models.segmentation.predict_probabilities` does. It returns probabilities, so the
    postprocessing takes no softmax of its own."""
    dims = [[int(a) + 2 for a in combo] for combo in flips]
    return {
        "window": window,
        "mirror_dims": dims,
        "inferer": "$lambda x, net: sum(torch.flip(torch.softmax(@window(torch.flip(x, d), net), 1), d) "
        "for d in @mirror_dims) / len(@mirror_dims)",
    }


def workflow_sections(
    spatial_dims: int,
    inferer: dict[str, Any],
    label_transforms: list[dict[str, Any]],
    flips: Sequence[Sequence[int]] = ((),),
) -> dict[str, Any]:
    """The workflow items of ``inference.json`` (they refer to its ``preprocessing``, ``network``, ``device``,
    ``ckpt_path`` and ``bundle_root``): ``inferer``, averaged over the test-time ``flips`` (network-grid axes of
    each mirrored copy, the identity ``()`` among them) when there is more than the identity, and
    ``label_transforms`` applied to the label map before it is written (e.g. ``KeepLargestConnectedComponentd``).

    A 2D model writes PNG: a radiograph's pixels in its own order, since a 2D NIfTI written from a PNG, which has no
    geometry, would carry a flipped one."""
    save: dict[str, Any] = {
        "_target_": "SaveImaged",
        "keys": "pred",
        "output_dir": "@output_dir",
        "output_postfix": "seg",
        "output_dtype": "$numpy.uint8",
        "resample": False,
        "separate_folder": False,
        "print_log": False,
    }
    if spatial_dims == 2:
        save["output_ext"] = ".png"
    patterns = ", ".join(repr(p) for p in DATASET_PATTERNS)
    mirrored = len(flips) > 1
    inference = mirrored_inferer(inferer, flips) if mirrored else {"inferer": inferer}
    softmax = [] if mirrored else [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    return {
        **inference,
        "imports": ["$import glob", "$import os"],
        "dataset_dir": "/workspace/data",
        "datalist": f"$sorted(f for p in ({patterns}) for f in glob.glob(os.path.join(@dataset_dir, p)))",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': f} for f in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                *softmax,
                # probabilities back onto the input's grid before the argmax, as the task runtime does
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                *label_transforms,
                save,
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "@ckpt_path",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


#: how to run a bundle with MONAI's own tools (the card's "Use" section)
MONAI_RUN_USAGE = [
    "Run it with MONAI's own tools on a folder of images (NIfTI, NRRD, MHA or PNG); one label file per image is",
    "written to OUT:",
    "",
    "```bash",
    'pip install "monai[fire,ignite,nibabel,skimage,itk]"',
    "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir IMAGES --output_dir OUT",
    "```",
    "",
    "`modelselector apply` writes the same labels as a Slicer `.seg.nrrd`. The two resample a little differently",
    "where the image is oblique or far from the model's spacing, and can then differ in a few border voxels.",
]


__all__ = ["DATASET_PATTERNS", "MONAI_RUN_USAGE", "workflow_sections"]
