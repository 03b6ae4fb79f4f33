"""Reading a markups file that holds several markups (a set of curves) into one node each.

Slicer's ``vtkMRMLMarkupsJsonStorageNode.ReadData`` reads the first markup of a ``.mrk.json`` into a given
node; the others are added here with ``AddNewMarkupsNodeFromFile``, as Slicer's own markups reader does.
"""

from typing import Any

#: node reference role from the node returned for a result file to the other markups read from that file
PART_ROLE = "modelSelectorResultPart"


def resultParts(node: Any) -> list:
    """The other nodes read from the file of result ``node`` (:func:`readOtherMarkups`, tied by
    :data:`PART_ROLE`): none for a segmentation or a file with one markup."""
    n = node.GetNumberOfNodeReferences(PART_ROLE) if hasattr(node, "GetNumberOfNodeReferences") else 0
    return [part for part in (node.GetNthNodeReference(PART_ROLE, i) for i in range(n)) if part is not None]


def readOtherMarkups(path: str, firstNode: Any) -> list:
    """Add a node for every markup of ``path`` after the first (already read into ``firstNode``) to
    ``firstNode``'s scene; returns the new nodes (none for a file with one markup, or outside a scene), each
    referred to by ``firstNode`` with :data:`PART_ROLE` so that removing a result can remove all of it."""
    import slicer

    scene = firstNode.GetScene()
    storageClass = getattr(slicer, "vtkMRMLMarkupsJsonStorageNode", None)
    if scene is None or storageClass is None or not firstNode.IsA("vtkMRMLMarkupsNode"):
        return []
    reader = storageClass()
    scene.AddNode(reader)
    try:
        types: list = []
        reader.GetMarkupsTypesInFile(path, types)
        nodes = [reader.AddNewMarkupsNodeFromFile(path, None, index) for index in range(1, len(types))]
    finally:
        scene.RemoveNode(reader)
    nodes = [node for node in nodes if node is not None]
    for node in nodes:
        node.CreateDefaultDisplayNodes()
        firstNode.AddNodeReferenceID(PART_ROLE, node.GetID())
    return nodes
