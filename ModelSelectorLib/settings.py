"""Settings given as YAML files or mappings: reading them, and refusing keys a settings class does not know."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Optional, Union

from .errors import TrainingError


def check_settings(cls: Any, data: dict[str, Any], what: str) -> None:
    """Raise :class:`TrainingError` when the mapping ``data`` names keys that are not fields of the dataclass
    ``cls``, or gives a value of another type than the field's (``epochs: one``, ``roi_size: 16``, ``augment:
    "no"``; a whole number passes for a number); ``what`` names the settings in the message (e.g. ``"training"``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainingError(
            f"unknown {what} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}."
        )
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        kind = hints.get(key, Any)
        if not _matches(value, kind):
            raise TrainingError(f"{what} setting {key}: {value!r} is not {_describe(kind)}.")


def _matches(value: Any, kind: Any) -> bool:
    """Whether a YAML value ``value`` is of the field type ``kind`` (types this module cannot judge pass)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value) if (origin is list or args[-1:] == (Ellipsis,)) else True
    if origin is dict or kind is dict:
        return isinstance(value, dict)
    return True


def _describe(kind: Any) -> str:
    """``kind`` in words, for a message."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list):
        plural = {bool: "true or false values", int: "whole numbers", float: "numbers", str: "names"}
        return f"a list of {plural[args[0]]}" if args and args[0] in plural else "a list"
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a mapping"}
    return words.get(kind, getattr(kind, "__name__", str(kind)))


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
