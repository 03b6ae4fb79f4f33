"""Provenance recorded on every trained model and report: the code version that made it."""

from __future__ import annotations

from pathlib import Path

from . import __version__


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


__all__ = ["code_version"]
