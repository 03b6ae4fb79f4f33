"""A trusted bundle's own Python code kept apart from other bundles'.

MONAI bundles keep their code in a package of the same name (``scripts``, e.g. ``scripts.networks.unest``).
Python keeps one module per name in ``sys.modules``, so the second bundle built in a process would get the first
one's classes (two versions of one bundle: the new version built from the old code). A bundle's modules are
forgotten before and after its network is built (:func:`forget_modules`), and lent back while that network runs
(:func:`lend_modules_while_running`), so that what its ``forward`` imports is its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def lend_modules_while_running(net: Any, names: set[str], modules: dict[str, Any]) -> None:
    """Put a trusted bundle's own modules (``modules``: those under its top-level ``names``) back while ``net``
    runs, so that what its code imports as it runs (``from scripts.x import y`` inside ``forward``) is its own,
    not another bundle's; after each run they are taken away again, and what the run imported is kept with them."""
    held: list[dict[str, Any]] = []

    def before(_module: Any, _inputs: Any) -> None:
        held.append(loaded_modules(names))  # another bundle's, or none
        forget_modules(names)
        sys.modules.update(modules)

    def after(_module: Any, _inputs: Any, _output: Any) -> None:
        modules.update(loaded_modules(names))
        forget_modules(names)
        sys.modules.update(held.pop() if held else {})

    net.register_forward_pre_hook(before)
    net.register_forward_hook(after)


def bundle_modules(path: Path) -> set[str]:
    """The top-level Python modules and packages a bundle folder provides (MONAI's are in ``scripts/``)."""
    names = set()
    for p in path.iterdir():
        if p.is_dir() and p.name.isidentifier() and any(p.glob("*.py")):
            names.add(p.name)
        elif p.suffix == ".py" and p.stem.isidentifier():
            names.add(p.stem)
    return names


def loaded_modules(names: set[str]) -> dict[str, Any]:
    """The modules under the top-level ``names`` that ``sys.modules`` holds now, by name."""
    return {m: sys.modules[m] for m in list(sys.modules) if m.split(".", 1)[0] in names}


def forget_modules(names: set[str]) -> None:
    """Remove the modules under the top-level ``names`` from ``sys.modules``: bundles name their code alike
    (``scripts.networks...``), so Python would otherwise hand each bundle the first one's modules."""
    for module in loaded_modules(names):
        del sys.modules[module]


__all__ = ["bundle_modules", "forget_modules", "lend_modules_while_running", "loaded_modules"]
