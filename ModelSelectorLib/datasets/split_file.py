"""Split files: the cases a sweep ranks on or the promotion gate compares on, as
``{"dataset", "seed", "labels", ..., "cases": [{"id", "image", "label"}]}``.

Written by the sweep (:func:`ModelSelectorLib.ranking.sweep.make_split`), the landmark grid
(:func:`ModelSelectorLib.training.landmark_grid.write_landmark_split`) and the starter zoo
(:func:`ModelSelectorLib.starter_zoo.build.write_test_split`); read by the leaderboard and the gate.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from .. import atomic
from ..errors import DatasetError

PathLike = Union[str, "os.PathLike[str]"]


def write_split(path: PathLike, root: PathLike, cases: Sequence[dict[str, str]], labels: dict[str, str], seed: int,
                relative: bool = False, **fields: Any) -> Path:  # fmt: skip
    """Write a split file that :func:`read_split` reads: ``{"dataset", "seed", "labels", **fields, "cases"}``.

    Args:
        root: the dataset folder that relative case paths start from.
        cases: ``[{"id", "image", "label"}]``, paths relative to ``root`` or absolute.
        labels: label value (as text) -> name.
        relative: write ``dataset`` relative to the file's folder (a split committed beside the code names no
            machine path); otherwise ``root`` as given.
        fields: further entries, e.g. ``purpose`` or ``fraction``.
    """
    target = Path(path)
    dataset = (
        Path(os.path.relpath(Path(root).resolve(), target.resolve().parent)).as_posix()
        if relative
        else str(root)
    )
    atomic.write_json(target, {"dataset": dataset, "seed": int(seed), "labels": labels, **fields,
                               "cases": list(cases)})  # fmt: skip
    return target


def read_split(path: PathLike) -> dict[str, Any]:
    """Read a split file written by :func:`write_split`; checks that its files exist.

    A relative ``dataset`` is taken relative to the split file's folder, and relative image and label paths
    relative to ``dataset`` (a split committed beside the code names no machine path).

    Raises:
        DatasetError: missing or malformed file, or missing image/label files.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such test split file; run `modelselector sweep` first or pass --split.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        root = p.parent / str(data.get("dataset", ""))
        cases = [
            {**c, "image": str(root / c["image"]), "label": str(root / c["label"])} for c in data["cases"]
        ]
        labels = {int(k): str(v) for k, v in data["labels"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DatasetError(f"{p}: not a test split file ({e}).") from e
    missing = [c[k] for c in cases for k in ("image", "label") if not Path(c[k]).is_file()]
    if missing:
        raise DatasetError(f"{p}: {len(missing)} test file(s) missing, e.g. {missing[0]}; restore them, or make "
                           "the split again from the data as it is now.")  # fmt: skip
    if not cases:
        raise DatasetError(f"{p}: the test split is empty.")
    # a case counted twice would count twice in the gate's paired test
    twice = sorted(i for i, n in Counter(str(c.get("id")) for c in cases).items() if n > 1)
    images = [str(Path(c["image"]).resolve()) for c in cases]
    if twice or len(set(images)) < len(images):
        what = f"case id(s) {', '.join(twice[:5])}" if twice else "an image"
        raise DatasetError(f"{p}: {what} listed more than once; list each test case once.")
    return {**data, "cases": cases, "labels": labels}


__all__ = ["read_split", "write_split"]
