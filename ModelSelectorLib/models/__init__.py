"""Task runtimes: one class per task type, in a registry.

A runtime (:class:`~.base.TaskRuntime`) turns any image into its model's input with the geometry kept,
predicts, computes the model-alone fit signals the selector uses, and writes the output file. Importing
this package registers every runtime; :func:`runtime_for` gives the one of a loaded bundle.

- :mod:`.segmentation`: label maps, ``.seg.nrrd``;
- :mod:`.landmarks`: heatmap landmarks, ``.mrk.json``;
- :mod:`.preprocessing`: resampling and intensity normalisation shared with training;
- :mod:`.bnstats`: batch-norm statistics (verification, model inversion).

Adding a task type is one new module with a registered :class:`~.base.TaskRuntime` subclass, imported here.
"""

from __future__ import annotations

from . import landmarks, segmentation  # noqa: F401  (registers the runtimes)
from .base import Prediction, TaskRuntime, quality_text
from .registry import output_spec, register_runtime, runtime_class, runtime_for, task_types

__all__ = [
    "Prediction",
    "TaskRuntime",
    "output_spec",
    "quality_text",
    "register_runtime",
    "runtime_class",
    "runtime_for",
    "task_types",
]
