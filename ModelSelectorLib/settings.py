"""Settings given as YAML files or mappings: reading them, and refusing keys a settings class does not know."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Union

from .errors import TrainingError


def check_settings(cls: Any, data: dict[str, Any], what: str) -> None:
    """Raise :class:`TrainingError` when the mapping ``data`` names keys that are not fields of the dataclass
    ``cls``; ``what`` names the settings in the message (e.g. ``"training"``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainingError(
            f"unknown {what} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}."
        )


def read_settings_file(
    path: Union[str, os.PathLike[str]], what: str = "config", example: Optional[str] = None
) -> Any:
    """The content of the YAML file ``path`` (``{}`` when empty).

    Args:
        path: the file.
        what: what the file is, for messages (``"config"``, ``"sweep"``).
        example: when given, the content must be a mapping; the message quotes this example setting.

    Raises:
        TrainingError: a missing file, invalid YAML, or (with ``example``) content that is not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"{p}: no such {what} file.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise TrainingError(f"{p}: not valid YAML ({e}).") from e
    if example is not None and not isinstance(data, dict):
        raise TrainingError(f"{p}: must hold a mapping of settings such as '{example}'.")
    return data
