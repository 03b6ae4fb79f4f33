"""Reading a markups file that holds several markups (a set of curves) into one node each.

Slicer's ``vtkMRMLMarkupsJsonStorageNode.ReadData`` reads the first markup of a ``.mrk.json`` into a given
node; the others are added here with ``AddNewMarkupsNodeFromFile``, as Slicer's own markups reader does.
"""

from typing import Any


def readOtherMarkups(path: str, firstNode: Any) -> list:
    """Add a node for every markup of ``path`` after the first (already read into ``firstNode``) to
    ``firstNode``'s scene; returns the new nodes (none for a file with one markup, or outside a scene)."""
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
    for node in nodes:
        if node is not None:
            node.CreateDefaultDisplayNodes()
    return [node for node in nodes if node is not None]
