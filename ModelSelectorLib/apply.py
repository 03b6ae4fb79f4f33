"""Applying a zoo model to an image file: the runtime of the model's task predicts, and writes its output.

``modelselector apply``, the demo and the Slicer module's worker process all come here, so every task type
is applied the same way: a ``.seg.nrrd`` for a segmentation model, a ``.mrk.json`` for a landmark model,
whatever the task's runtime writes for others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .errors import BatchCancelled, Cancelled, InputError, OutputError
from .io.image import Image, as_image, check_model_input, read_image
from .io.outputs import check_output_file, check_output_folder, output_name
from .models.base import TaskRuntime, check_dimensions
from .models.preprocessing import check_device
from .models.registry import output_spec, runtime_for
from .progress import check_cancel, progress_bar
from .selection.field_of_view import field_of_view
from .selection.intensity_units import air_share, compare_units
from .zoo.bundle import load_bundle
from .zoo.catalog import Zoo, open_zoo

PathLike = Union[str, "os.PathLike[str]"]


def open_runtime(zoo: Union[Zoo, PathLike], model_name: str, device: str = "cpu") -> TaskRuntime:
    """The runtime of zoo model ``model_name`` (current version), its network on ``device``.

    Raises:
        ZooError: no such zoo or model. BundleError: an invalid bundle. InputError: an unusable device.
    """
    device = check_device(device)
    z = open_zoo(zoo)
    z.check_weights(model_name)  # weights replaced in the zoo would load and answer wrongly without a word
    return runtime_for(load_bundle(z.get(model_name), device=device), device=device)


def apply_to_file(
    zoo_path: Union[Zoo, PathLike],
    model_name: str,
    image_path: PathLike,
    out_path: PathLike,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    series_uid: Optional[str] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> Path:
    """Read ``image_path``, apply zoo model ``model_name``, write ``out_path`` in the task's format (a
    ``.seg.nrrd`` with segment names, colours and terminology for a segmentation model; a Slicer markups
    ``.mrk.json`` in LPS with the card's point names for a landmark model), in the image's geometry.

    The output path and the image are checked before the model is loaded, so that a wrong ``--out`` or a
    damaged image is reported at once.

    Args:
        series_uid: the DICOM series to read when ``image_path`` is a folder holding several.
        warn: called with a sentence when the image's values are not in the units the model expects (a CT
            model and no Hounsfield units, an MR model and a CT: :mod:`~ModelSelectorLib.selection.intensity_units`),
            or when the volume's field of view is several times smaller or larger than the model's training
            inputs (:mod:`~ModelSelectorLib.selection.field_of_view`); the model is applied all the same, since
            an expert may know better.

    Raises:
        OutputError: ``out_path`` is a folder, has another extension than the task's format, or cannot be
        written; InputError: unreadable, 4D, empty or NaN image, or a label map; ZooError: no such zoo or
        model; BundleError.
    """
    _check_path(image_path, "apply_to_file")
    device = check_device(device)
    zoo = open_zoo(zoo_path)
    card = zoo.card(model_name)
    out = check_output_file(out_path, output_spec(card.task_type)["suffix"])
    image = read_model_input(image_path, card, series_uid, warn, zoo)
    runtime = open_runtime(zoo, model_name, device)
    return runtime.write(runtime.predict(image, cancel=cancel), out)


def apply_to_files(
    zoo_path: Union[Zoo, PathLike],
    model_name: str,
    image_paths: Sequence[PathLike],
    out_dir: PathLike,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    warn: Optional[Callable[[str], None]] = None,
    skip_existing: bool = False,
    on_done: Optional[Callable[[Path, Optional[Path], Optional[str]], None]] = None,
) -> list[tuple[Path, Optional[Path], Optional[str]]]:
    """Apply zoo model ``model_name`` to several images, loading it once, as :func:`apply_to_file` applies it to
    one: ``out_dir/<image name><suffix>`` for each (``ct.nii.gz`` -> ``ct.seg.nrrd``; a DICOM folder's name).

    Every output path is checked before the model is loaded. An image that cannot be a model's input (unreadable,
    4D, a label map, ...) is skipped with its reason, and the others are written.

    Args:
        skip_existing: leave an image whose output exists already alone, to resume an interrupted batch (outputs
            are written whole or not at all, so an existing one is complete). The model is not loaded when every
            output exists.
        on_done: called with each image's result (as returned) as soon as it is final, its output written, so that
            a caller can list the outputs while the batch runs and still knows them if it is interrupted.

    Returns:
        ``[(image path, output, reason)]`` in the order given: ``(image, written output, None)``; ``(image, None,
        why it was skipped)``; with ``skip_existing``, ``(image, existing output, "<output> exists")``.

    Raises:
        OutputError: ``out_dir`` cannot be written, or two images would write the same output (same name in
            different folders). ZooError, BundleError. BatchCancelled (a :class:`~.errors.Cancelled`): between
            images or within one; its ``done`` holds the results of the images finished before, whose outputs
            are kept.
    """
    for path in image_paths:
        _check_path(path, "apply_to_files")
    device = check_device(device)
    zoo = open_zoo(zoo_path)
    card = zoo.card(model_name)
    folder, outs = _batch_outputs(image_paths, out_dir, output_spec(card.task_type)["suffix"], skip_existing)
    existing = {out for out in outs if skip_existing and out.is_file()}
    runtime = open_runtime(zoo, model_name, device) if len(existing) < len(outs) else None
    folder.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Path, Optional[Path], Optional[str]]] = []
    try:
        for path, out in progress_bar(list(zip(image_paths, outs)), desc=f"apply {model_name}"):
            check_cancel(cancel)
            if out in existing or runtime is None:
                result: tuple[Path, Optional[Path], Optional[str]] = (Path(path), out, f"{out} exists")
            else:
                result = _apply_one(runtime, card, zoo, path, out, cancel, warn)
            results.append(result)
            if on_done is not None:
                on_done(*result)
    except Cancelled as e:
        raise BatchCancelled(
            f"cancelled after {len(results)} of {len(outs)} images; their outputs in {folder} are kept and nothing "
            "half-written was left behind.",
            results,
        ) from e
    return results


def _batch_outputs(
    image_paths: Sequence[PathLike], out_dir: PathLike, suffix: str, skip_existing: bool
) -> tuple[Path, list[Path]]:
    """The checked output folder of :func:`apply_to_files` and the output path of each image in it (an existing
    output that ``skip_existing`` leaves alone need not be writable).

    Raises:
        OutputError: as :func:`apply_to_files`.
    """
    if Path(out_dir).name.lower().endswith(suffix) and not Path(out_dir).is_dir():
        raise OutputError(f"{out_dir}: with several images --out is the folder of their outputs, not a {suffix} "
                          "file; name a folder (each output is named after its image).")  # fmt: skip
    folder = check_output_folder(out_dir)
    named: dict[str, PathLike] = {}
    for path in image_paths:
        name = output_name(path, suffix)
        if name in named:
            raise OutputError(f"{named[name]} and {path} would both be written to {folder / name}; apply them in "
                              "separate runs or rename one.")  # fmt: skip
        named[name] = path
    return folder, [
        folder / name
        if skip_existing and (folder / name).is_file()
        else check_output_file(folder / name, suffix)
        for name in named
    ]


def _apply_one(
    runtime: TaskRuntime,
    card: Any,
    zoo: Zoo,
    image_path: PathLike,
    out: Path,
    cancel: Optional[Any],
    warn: Optional[Callable[[str], None]],
) -> tuple[Path, Optional[Path], Optional[str]]:
    """One image of :func:`apply_to_files`: ``(image, written output, None)``, or ``(image, None, why)`` when the
    model cannot take it (unreadable, a label map, another dimension)."""
    try:
        prediction = runtime.predict(read_model_input(image_path, card, warn=warn, zoo=zoo), cancel=cancel)
    except InputError as e:
        return Path(image_path), None, str(e) if str(image_path) in str(e) else f"{image_path}: {e}"
    return Path(image_path), runtime.write(prediction, out), None


def output_in_folder(
    zoo_path: Union[Zoo, PathLike], model_name: str, image_path: PathLike, folder: PathLike
) -> Path:
    """Where :func:`apply_to_files` writes the output of ``image_path`` in ``folder``: its name with the extension of
    the model's output format (``ct.nii.gz`` -> ``folder/ct.seg.nrrd``)."""
    zoo = open_zoo(zoo_path)
    return Path(folder) / output_name(image_path, output_spec(zoo.card(model_name).task_type)["suffix"])


def read_model_input(
    image_path: PathLike,
    card: Any,
    series_uid: Optional[str] = None,
    warn: Optional[Callable[[str], None]] = None,
    zoo: Optional[Zoo] = None,
) -> Image:
    """Read ``image_path`` for the model of ``card`` as :func:`apply_to_file` does: refuse what cannot be a
    model's input (a label map, an icon), and ``warn`` of values in units the model does not take, of a
    field of view unlike its training inputs', and (given the ``zoo``) of an image the selector does not find
    the model fits (:func:`fit_problem`).

    Raises:
        InputError: not a path, unreadable, 4D, empty or NaN image, a label map, an image too small to show
            anatomy.
    """
    _check_path(image_path, "read_model_input")
    image = read_image(image_path, series_uid=series_uid)
    check_model_input(image, str(image_path))
    check_dimensions(card, image)  # before any warning: a model that cannot take it is not applied
    if warn is not None:
        _warn_of_problems(image, card, warn, zoo)
    return image


def apply_to_image(
    zoo_path: Union[Zoo, PathLike],
    model_name: str,
    image: Any,
    device: str = "cpu",
    cancel: Optional[Any] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> Any:
    """Apply zoo model ``model_name`` to an image in memory with the checks :func:`apply_to_file` makes of a file:
    what cannot be a model's input is refused, and ``warn`` (default: Python's :func:`warnings.warn`) hears of
    values in units the model does not take, a field of view unlike its training inputs' and an image the
    selector does not find the model fits.

    Args:
        image: what :func:`~.io.image.as_image` takes: an :class:`~.io.image.Image`, a SimpleITK image, a MONAI
            ``MetaTensor``, a nibabel image (or a file path).

    Returns:
        the runtime's :class:`~.models.base.Prediction` in the image's geometry (a label map's ``value`` is an
        :class:`~.io.image.Image`: ``io.write_image`` or ``open_runtime(...).write`` writes it).

    Raises:
        InputError: a label map, an empty or NaN image, an image too small to show anatomy, an unusable device.
        ZooError, BundleError. Cancelled.
    """
    import warnings

    device = check_device(device)
    zoo = open_zoo(zoo_path)
    card = zoo.card(model_name)
    image = as_image(image)
    check_model_input(image, str(image.meta.get("path", "the image")))
    check_dimensions(card, image)
    _warn_of_problems(image, card, warn or (lambda text: warnings.warn(text, UserWarning, stacklevel=3)), zoo)
    return open_runtime(zoo, model_name, device).predict(image, cancel=cancel)


def _warn_of_problems(image: Image, card: Any, warn: Callable[[str], None], zoo: Optional[Zoo]) -> None:
    """``warn`` of units, a field of view and (given the ``zoo``) a fit the model of ``card`` does not take."""
    for what in (compare_units(air_share(image), card), field_of_view(image, card)):
        if what is not None and not what.fits:
            warn(f"{card.name}: {what.describe()}; its output may be meaningless: {what.advice()}.")
    problem = fit_problem(image, zoo, card) if zoo is not None else None
    if problem:
        warn(problem)


def _check_path(image_path: Any, function: str) -> None:
    """Refuse an image in memory where a file path is needed, naming the call that takes it."""
    if not isinstance(image_path, (str, os.PathLike)):
        kind = f"{type(image_path).__module__}.{type(image_path).__name__}"
        raise InputError(
            f"{function} takes an image file path, not a {kind}; for an image in memory use "
            "apply_to_image(zoo, model_name, image), or open_runtime(zoo, model_name).predict(image) without checks."
        )


def fit_problem(image: Image, zoo: Zoo, card: Any) -> Optional[str]:
    """Why the selector does not find that the model of ``card`` fits ``image`` (its calibrated score below the
    threshold, as ``modelselector select --no-verify`` scores it), for a warning before the model is applied
    anyway; a grey picture that the model fits once inverted (:attr:`~.selection.selector.Selection.
    fits_once_inverted`) is said to look inverted. None when it fits, or the zoo has no index that scores the
    model."""
    from .errors import ModelSelectorError
    from .selection.selector import select

    try:
        selection = select(image, zoo=zoo, top_k=None, verify=False, check=False)
    except ModelSelectorError:  # no index, a stale one, another encoder's: nothing to ask
        return None
    match = next((m for m in selection.models if m.name == card.name), None)
    if match is None or match.score >= selection.threshold:
        return None
    text = (f"{card.name}: the selector does not find that it fits this image (score {match.score:.2f}, below "
            f"{selection.threshold:.2f}); its output may be meaningless")  # fmt: skip
    if card.name in selection.fits_once_inverted:
        return (f"{text}. The image looks inverted (the model fits it with its grey levels inverted: bright air "
                "and dark bones, as a MONOCHROME1 radiograph exported without its photometric interpretation); "
                "invert it and apply again.")  # fmt: skip
    return text + "."


__all__ = [
    "apply_to_file",
    "apply_to_image",
    "apply_to_files",
    "fit_problem",
    "open_runtime",
    "output_in_folder",
    "read_model_input",
]
