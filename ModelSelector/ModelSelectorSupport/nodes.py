"""MRML nodes to and from files for the Model Selector module: the input volume written for the child
process, and each result read into a new node of the input volume's own scene, beside that volume."""

from __future__ import annotations

from typing import Any

import slicer

from .jobs import ModelSelectorProcessError, removeResult
from .markups import readOtherMarkups


def writeVolume(volumeNode: Any, path: str) -> str:
    """Write ``volumeNode`` (scalar or RGB vector volume, with its geometry) to ``path`` (``.nrrd``)."""
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("select an input volume that holds an image")
    if volumeNode.GetImageData().GetNumberOfPoints() == 0:  # else the writer fails as if the disk were full
        raise ValueError(
            f"volume '{volumeNode.GetName()}' holds no voxels; load its image again or select another volume"
        )
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if components not in (
        1,
        3,
        4,
    ):  # the writer takes grey, RGB and RGBA; others it fails as if the disk were full
        raise ValueError(
            f"volume '{volumeNode.GetName()}' has {components} values per voxel (a multi-frame or multi-channel "
            "image); select a scalar volume of one frame or channel (for a sequence, its proxy volume), or an RGB one"
        )
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(path)
    storageNode.SetUseCompression(False)
    if not storageNode.WriteData(volumeNode):
        raise OSError(f"could not write volume '{volumeNode.GetName()}' to {path}; check the free disk space")
    return path


def placeBeside(node: Any, referenceNode: Any) -> None:
    """Put ``node`` in the subject hierarchy folder (patient, study) that holds ``referenceNode``."""
    scene = node.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None
    if shNode is None:
        return
    refItem = shNode.GetItemByDataNode(referenceNode)
    if not refItem:
        return
    parent = shNode.GetItemParent(refItem)
    item = shNode.GetItemByDataNode(node)
    if not item:  # no subject hierarchy plugins (MRML without the application): add the item ourselves
        shNode.CreateItem(parent, node)
    elif parent:
        shNode.SetItemParent(item, parent)


def giveUniqueName(node: Any, assignedName: str) -> None:
    """Make the name that reading gave ``node`` (a markups file names its curves) unique in its scene, as a
    new node's: reading the same result twice must not give two nodes of one name."""
    scene, name = node.GetScene(), node.GetName() or assignedName
    if scene is None or name == assignedName:  # the name given before reading is unique already
        return
    node.SetName("")  # else the node's own name counts as taken
    node.SetName(scene.GenerateUniqueName(name))


def readResult(path: str, name: str, spec: dict[str, str], volumeNode: Any) -> Any:
    """Read result file ``path`` into a new node named ``name`` in ``volumeNode``'s scene, beside it.

    ``spec`` names the MRML node and storage node classes (the task runtime's ``output_spec``). A
    segmentation takes ``volumeNode`` as its reference geometry. A markups file that holds several markups
    (a set of curves) gives one node per markup; the first is returned. Every node gets a unique name and
    observes ``volumeNode``'s parent transform, so that it lies on the volume in world space. Nothing is added
    when reading fails.
    """
    scene = volumeNode.GetScene() if volumeNode is not None else None
    if scene is None:
        raise ModelSelectorProcessError(f"the input volume of model '{name}' is no longer in a scene")
    node = getattr(slicer, spec["node_class"])()
    storageNode = getattr(slicer, spec["storage_class"])()
    assignedName = scene.GenerateUniqueName(name)
    node.SetName(assignedName)
    scene.AddNode(node)  # reading creates display nodes, which need the scene
    storageNode.SetFileName(path)
    if not storageNode.ReadData(node):
        removeResult(node)
        raise ModelSelectorProcessError(f"could not read the result of model '{name}' ({path})")
    node.CreateDefaultDisplayNodes()
    if hasattr(node, "SetReferenceImageGeometryParameterFromVolumeNode"):  # keep the input's grid
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        node.SetNodeReferenceID("referenceImageGeometryRef", volumeNode.GetID())
    for n in [node, *readOtherMarkups(path, node)]:
        giveUniqueName(n, assignedName)
        n.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        placeBeside(n, volumeNode)
    return node
