"""The registry of task runtimes: the one place that maps a card's ``task_type`` to code.

A task type exists when a :class:`~.base.TaskRuntime` subclass is registered for it::

    @register_runtime
    class ClassificationRuntime(TaskRuntime):
        task_type = "classification"
        ...

and imported by :mod:`ModelSelectorLib.models` (its ``__init__``, which Python runs before this module
can be imported, so every runtime is registered before the registry is asked). Selection, the demo, the
command line and the Slicer module ask the registry; none of them names a task type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ..errors import BundleError

if TYPE_CHECKING:  # pragma: no cover
    from .base import TaskRuntime

_RUNTIMES: dict[str, type[TaskRuntime]] = {}
#: the task a standard MONAI bundle is taken to have when its metadata names none (most zoo bundles segment)
DEFAULT_TASK_TYPE = "segmentation"


def register_runtime(cls: type[TaskRuntime]) -> type[TaskRuntime]:
    """Class decorator: make ``cls`` the runtime of ``cls.task_type``."""
    task = getattr(cls, "task_type", "")
    if not task or not isinstance(task, str):
        raise TypeError(f"{cls.__name__} must set the class attribute task_type")
    if task in _RUNTIMES and _RUNTIMES[task] is not cls:
        raise TypeError(f"task type {task!r} already has the runtime {_RUNTIMES[task].__name__}")
    _RUNTIMES[task] = cls
    return cls


def task_types() -> tuple[str, ...]:
    """The task types this version can run, sorted."""
    return tuple(sorted(_RUNTIMES))


def runtime_class(task_type: str) -> type[TaskRuntime]:
    """The runtime class of ``task_type``.

    Raises:
        BundleError: no runtime for ``task_type``; the message lists the known ones.
    """
    try:
        return _RUNTIMES[task_type]
    except (KeyError, TypeError):
        raise BundleError(
            f"no runtime for task type {task_type!r}; this version runs {', '.join(sorted(_RUNTIMES))}."
        ) from None


def runtime_for(bundle: Any, device: str = "cpu") -> TaskRuntime:
    """The runtime of a loaded bundle (:class:`~ModelSelectorLib.zoo.bundle.LoadedBundle`) on ``device``."""
    return runtime_class(bundle.card.task_type)(bundle, device=device)


def output_formats(task_type: str) -> tuple[str, ...]:
    """The MONAI ``network_data_format.outputs.pred.format`` values a ``task_type`` model's output has: the
    runtime's ``output_formats`` (e.g. segmentation: ``segmentation``, ``labels``), else its task type."""
    cls = runtime_class(task_type)
    return tuple(getattr(cls, "output_formats", None) or (cls.task_type,))


def guess_task_type(text: str, output_format: Optional[str] = None) -> str:
    """The task type of a standard MONAI bundle: the one whose :func:`output_formats` hold the metadata's
    ``output_format`` when it states one; else the one whose keywords appear in ``text`` (the metadata's task
    and name), else :data:`DEFAULT_TASK_TYPE`.

    Raises:
        BundleError: ``output_format`` is stated and no runtime produces it (``"classes"`` of a classifier,
            ``"probabilities"``): such a bundle is never taken for a segmentation model.
    """
    fmt = str(output_format or "").strip().lower()
    if fmt:
        for task in sorted(_RUNTIMES):
            if fmt in output_formats(task):
                return task
        known = ", ".join(sorted({f for t in _RUNTIMES for f in output_formats(t)}))
        raise BundleError(
            f"network_data_format.outputs.pred.format is {output_format!r}, an output no runtime of this version "
            f"produces (it runs {', '.join(sorted(_RUNTIMES))}: formats {known}); the bundle cannot be added."
        )
    low = text.lower()
    for task in sorted(_RUNTIMES):
        if any(k in low for k in _RUNTIMES[task].keywords):
            return task
    return DEFAULT_TASK_TYPE


def output_spec(task_type: str) -> dict[str, str]:
    """How a ``task_type`` model's output is stored and shown: ``{"suffix": ".seg.nrrd", "node_class":
    "vtkMRMLSegmentationNode", "storage_class": "vtkMRMLSegmentationStorageNode"}`` (3D Slicer classes)."""
    cls = runtime_class(task_type)
    return {
        "suffix": cls.output_suffix,
        "node_class": cls.slicer_node_class,
        "storage_class": cls.slicer_storage_class,
    }


__all__ = [
    "DEFAULT_TASK_TYPE",
    "guess_task_type",
    "output_formats",
    "output_spec",
    "register_runtime",
    "runtime_class",
    "runtime_for",
    "task_types",
]
