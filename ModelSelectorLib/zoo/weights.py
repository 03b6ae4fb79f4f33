"""A bundle's weights (``models/model.pt``), read without running anything and fitted to its network.

Weights load with ``torch.load(weights_only=True)``: tensors and plain containers only, never pickled objects.
Before torch reads a file, :func:`~.bundle_limits.weights_bytes` refuses one whose compressed entries would
inflate far beyond its size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from ..errors import BundleError
from .bundle_limits import weights_bytes

PathLike = Union[str, Path]


def read_state_dict(weights_path: PathLike, device: str = "cpu") -> dict[str, Any]:
    """The state_dict in a weights file, read with ``weights_only=True`` (no arbitrary unpickling): a plain
    state_dict, or a checkpoint dict with a ``"model"`` or ``"state_dict"`` entry (``module.`` prefixes of a
    data-parallel run removed).

    Raises:
        BundleError: not a weights file, or no state_dict in it. A file holding pickled objects (or a
            TorchScript archive) is refused naming what torch refused (the forbidden global); it is never
            loaded otherwise. So is one whose compressed entries would inflate far beyond its size
            (:func:`~.bundle_limits.weights_bytes`), before anything is inflated.
    """
    import pickle
    import warnings

    import torch

    weights_path = Path(weights_path)
    weights_bytes(weights_path)  # refuses entries that would inflate far beyond the file
    try:
        with warnings.catch_warnings():  # torch warns of TorchScript archives before refusing them
            warnings.simplefilter("ignore")
            ckpt = torch.load(str(weights_path), map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for non-tensor content, RuntimeError for broken files
        raise BundleError(f"{weights_path}: {_load_refusal(e, pickle.UnpicklingError)}") from e
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise BundleError(f"{weights_path}: holds a {type(ckpt).__name__}, not a state_dict.")
    if ckpt and all(str(k).startswith("module.") for k in ckpt):
        ckpt = {str(k)[len("module.") :]: v for k, v in ckpt.items()}
    return ckpt


def _load_refusal(error: BaseException, unpickling: type) -> str:
    """Why torch refused a weights file, in ModelSelector's terms: never torch's advice to load it with
    ``weights_only=False`` (which would run the file's code)."""
    text = str(error).strip()
    if "TorchScript" in text:
        return (
            "is a TorchScript archive, not a state_dict; ModelSelector needs the network's state_dict in "
            "models/model.pt (torch.save(network.state_dict(), 'models/model.pt'))."
        )
    detail = next(
        (ln.strip() for ln in text.splitlines() if "nsupported" in ln and "weights_only" not in ln), ""
    )
    if isinstance(error, unpickling) or detail:
        detail = detail.split("error:")[-1].strip().split(". Please use")[0].rstrip(".")
        return (
            "holds more than tensors (pickled objects are never loaded)"
            + (f": {detail}." if detail else ".")
            + " Save only the network's state_dict (torch.save(network.state_dict(), 'models/model.pt'))."
        )
    first = text.splitlines()[0] if text else type(error).__name__
    return f"not loadable as plain weights ({first})."


def load_weights(
    network: Any, weights_path: PathLike, device: str = "cpu", state_dict: Optional[dict[str, Any]] = None
) -> None:
    """Load ``models/model.pt`` into ``network`` (:func:`read_state_dict`; ``state_dict`` when read already)."""
    fit_weights(
        network, read_state_dict(weights_path, device) if state_dict is None else state_dict, weights_path
    )


def fit_weights(network: Any, ckpt: dict[str, Any], weights_path: PathLike) -> None:
    """Load state_dict ``ckpt`` into ``network`` (on torch's ``meta`` device this only compares names and
    shapes); a mismatch is refused naming the first tensors torch names."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns that copying into meta parameters does nothing
            warnings.simplefilter("ignore")
            network.load_state_dict(ckpt, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        # torch's first line only says "Error(s) in loading state_dict"; the next says which tensor and how
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise BundleError(
            f"{weights_path}: the weights do not fit the network in inference.json ({detail[:400]})."
        ) from e


__all__ = ["fit_weights", "load_weights", "read_state_dict"]
