"""Test data of the Model Selector self-test: a small oblique volume and a tiny zoo with an untrained network."""

import os
from typing import Any

import slicer


def vtk_matrix_to_list(volumeNode: Any) -> list[float]:
    """The IJK-to-RAS matrix of ``volumeNode``, row by row."""
    import vtk as _vtk

    matrix = _vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return [matrix.GetElement(r, c) for r in range(4) for c in range(4)]


def make_test_volume(scene: Any, rng: Any, name: str = "TestVolume") -> Any:
    """A small scalar volume with anisotropic spacing, a non-zero origin and an oblique direction."""
    import math

    import numpy as np
    import vtk as _vtk

    array = rng.normal(0.0, 20.0, (10, 16, 20)).astype(np.float32)  # (k, j, i)
    array[3:7, 4:12, 5:15] += 200.0
    image = _vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(_vtk.VTK_FLOAT, 1)
    from vtk.util import numpy_support

    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetSpacing(0.8, 1.1, 2.5)
    node.SetOrigin(-30.5, 12.25, 40.0)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    directions = _vtk.vtkMatrix4x4()
    for r, row in enumerate(((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))):
        for col, value in enumerate(row):
            directions.SetElement(r, col, value)
    node.SetIJKToRASDirectionMatrix(directions)
    node.SetAndObserveImageData(image)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def make_tiny_zoo(folder: str, name: str = "TinyTest") -> str:
    """A zoo with one untrained, tiny 3D UNet segmentation bundle (2 labels); returns the zoo path."""
    import torch

    from ModelSelectorLib.zoo import ModelCard, Zoo, save_bundle

    torch.manual_seed(0)
    network_def = {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    from monai.networks.nets import UNet

    network = UNet(**{k: v for k, v in network_def.items() if k != "_target_"})
    card = ModelCard(
        name=name,
        version="0.1.0",
        task_type="segmentation",
        modality="CT",
        body_region="ABDOMEN",
        labels=[
            {"value": 1, "name": "Liver", "color": [0.86, 0.31, 0.24],
             "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                             "type": ["SCT", "10200004", "Liver"]}},
            {"value": 2, "name": "Spleen", "color": [0.27, 0.56, 0.84],
             "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                             "type": ["SCT", "78961009", "Spleen"]}},
        ],
        target_spacing=[2.0, 2.0, 2.5],
        intensity={"mode": "ct", "a_min": -200.0, "a_max": 300.0},
        roi_size=[16, 16, 16],
        training_data="none (untrained test network)",
        synthetic=True,
        seed=0,
    )  # fmt: skip
    bundleDir = os.path.join(folder, "bundle_" + name)
    save_bundle(bundleDir, card, network_def, network.state_dict())
    zooPath = os.path.join(folder, "zoo")
    zoo = Zoo.create(zooPath)
    zoo.add(bundleDir)
    return zooPath
