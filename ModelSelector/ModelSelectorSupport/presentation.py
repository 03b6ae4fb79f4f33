"""How the Model Selector module shows things: the rows of its models table, the status line of a search, and
which results get a 3D surface. Plain data and MRML only (no Qt), so that tests check what the widget draws."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

NO_FIT_MESSAGE = "No model in the zoo fits this image"
#: columns of the models table, one per cell of a :class:`ModelRow` (the .ui file names the same)
MODEL_COLUMNS = ("Model", "Task", "Modality", "Region", "Score", "Fits", "Held-out (cases)")
#: 3D surface choices: build them for small results only, always, or never
SURFACES_AUTO, SURFACES_ALWAYS, SURFACES_NEVER = "auto", "always", "never"
SURFACE_CHOICES = (
    ("Small results only", SURFACES_AUTO),
    ("Always", SURFACES_ALWAYS),
    ("Never", SURFACES_NEVER),
)
#: largest result grid (voxels) that gets a 3D surface automatically: about a second on the main thread
SURFACE_AUTO_MAX_VOXELS = 256 * 256 * 128


@dataclasses.dataclass
class ModelRow:
    """One row of the models table: its cell texts, whether it starts ticked, and its tooltip.

    Every row can be ticked, ranked or not: an expert may apply a model that does not fit, or one listed
    from the zoo without ranking.
    """

    name: str
    cells: tuple[str, ...]
    checked: bool
    tooltip: str = ""


def modelRows(models: list[dict[str, Any]]) -> list[ModelRow]:
    """Table rows for ``models`` (ranked answers of *Find models*, or the zoo's list without scores).

    Only the best-ranked model starts ticked, and only when it fits. The *Fits* cell is the selection's answer
    (``yes``, ``no``, ``needs the volume``, ``needs Hounsfield units``, ``needs a crop``, ``needs a wider
    view``). The last column is the model's held-out figure from its card, marked when it is a demonstration
    model.
    """
    from ModelSelectorLib.models.base import quality_text

    rows = []
    for index, m in enumerate(models):
        score, fits = m.get("score"), m.get("fits")
        cells = (
            str(m.get("name", "")),
            str(m.get("task", m.get("task_type", ""))),
            str(m.get("modality", "")),
            str(m.get("body_region", "")),
            "" if score is None else f"{float(score):.3f}",
            "" if fits is None else str(m.get("answer") or ("yes" if fits else "no")),
            quality_text(m.get("held_out"), bool(m.get("demonstration"))),
        )
        reasons = m.get("reasons") or []
        rows.append(ModelRow(cells[0], cells, bool(fits) and index == 0, "\n".join(str(r) for r in reasons)))
    return rows


def findStatus(models: list[dict[str, Any]]) -> str:
    """The status line after *Find models*: how many models fit, or that none does, naming the models whose
    kind of image this is but which need something first (the whole volume, Hounsfield units, a crop, a
    wider view: the row's tooltip says what to do); a model that works slice by slice is said to take the lone
    slice all the same."""
    n_fit = sum(1 for m in models if m.get("fits"))
    if n_fit:
        return f"{n_fit} of {len(models)} models fit this image."
    needs = [_need(m) for m in models if m.get("answer") not in (None, "yes", "no")]
    if not needs:
        return NO_FIT_MESSAGE + " (you can still tick a model and apply it)."
    return (f"{NO_FIT_MESSAGE} as it is: {'; '.join(needs)} (the row's tooltip says what to do; you can still "
            "tick a model and apply it).")  # fmt: skip


def _need(m: dict[str, Any]) -> str:
    """``NAME ANSWER`` of a model that needs something first; a slice-wise model that needs the volume can still
    be applied to the lone slice."""
    text = f"{m.get('name')} {m.get('answer')}"
    if m.get("slice_wise") and m.get("answer") == "needs the volume":
        text += " for its figures but can be applied to this slice"
    return text


def gridVoxels(volumeNode: Any) -> int:
    """Number of voxels of ``volumeNode``'s image (0 when it has none)."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None:
        return 0
    i, j, k = image.GetDimensions()
    return i * j * k


def wantsSurface(node: Any, volumeNode: Any, mode: Optional[str] = SURFACES_AUTO) -> bool:
    """Whether result ``node`` (computed on ``volumeNode``) gets a 3D surface: segmentations only; with
    ``"auto"``, only results of at most :data:`SURFACE_AUTO_MAX_VOXELS` voxels that span several slices."""
    if not node.IsA("vtkMRMLSegmentationNode") or mode == SURFACES_NEVER:
        return False
    if mode == SURFACES_ALWAYS:
        return True
    image = volumeNode.GetImageData() if volumeNode is not None else None
    several_slices = image is not None and min(image.GetDimensions()) > 1
    return several_slices and gridVoxels(volumeNode) <= SURFACE_AUTO_MAX_VOXELS


def showResults(nodes: list[Any], volumeNode: Any, surfaces: Optional[str] = SURFACES_AUTO) -> list[Any]:
    """Prepare result nodes for display: a 3D surface where :func:`wantsSurface` says so (markups and other
    results are shown as loaded). Returns the nodes that got a surface."""
    surfaced = []
    for node in nodes:
        if node.GetScene() is not None and wantsSurface(node, volumeNode, surfaces):
            node.CreateClosedSurfaceRepresentation()
            surfaced.append(node)
    return surfaced
