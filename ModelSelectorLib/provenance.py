"""Provenance recorded on every trained model and report: the code version that made it, and what a file is."""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Union

from . import __version__


def utc_timestamp() -> str:
    """Now, in UTC to the second, ISO 8601 (``2026-12-03T08:00:00+00:00``): the dates in catalogs and reports."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def code_version() -> str:
    """``ModelSelectorLib.__version__``, plus ``+g<hash>`` when the source is a git checkout.

    The commit is read from ``.git`` directly (no git process is run)."""
    git = Path(__file__).resolve().parent.parent / ".git"  # the checkout holding this package
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text(encoding="utf-8").split(":", 1)[1].strip())
        common = (
            (git / (git / "commondir").read_text(encoding="utf-8").strip())
            if (git / "commondir").is_file()
            else git
        )
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if head.startswith("ref:"):
            ref = head.split(":", 1)[1].strip()
            head = ""
            for base in (git, common):
                if (base / ref).is_file():
                    head = (base / ref).read_text(encoding="utf-8").strip()
                    break
                packed = base / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text(encoding="utf-8").splitlines():
                        parts = line.split()
                        if len(parts) == 2 and parts[1] == ref:
                            head = parts[0]
                if head:
                    break
        return f"{__version__}+g{head[:10]}" if len(head) >= 10 else __version__
    except (OSError, IndexError):
        return __version__


def file_digest(path: Union[str, os.PathLike[str]]) -> dict[str, object]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


__all__ = ["code_version", "file_digest"]
