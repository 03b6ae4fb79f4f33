"""Split files: the cases a sweep ranks on or the promotion gate compares on, as
``{"dataset", "seed", "labels", ..., "cases": [{"id", "image", "label"}]}``. ``labels`` are the models' label
values (``1..K``); when the label files hold other values, ``label_values`` maps them (``{"255": 1}``).

Written by the sweep (:func:`ModelSelectorLib.ranking.sweep.make_split`), the landmark grid
(:func:`ModelSelectorLib.training.landmark_grid.write_landmark_split`) and the starter zoo
(:func:`ModelSelectorLib.starter_zoo.build.write_test_split`); read by the leaderboard and the gate.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

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
        values = {int(k): int(v) for k, v in (data.get("label_values") or {}).items()}
        if values:  # the label files' values -> the models' label values, which each case carries to scoring
            cases = [{**c, "label_values": values} for c in cases]
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


def check_earlier_split(
    test_file: Path, dataset: Optional[str], root: PathLike, needed: Sequence[Path],
    kept: Optional[dict[str, Any]] = None, not_in_test: Iterable[str] = (), seed: Optional[int] = None,
    fraction: Optional[float] = None,
) -> None:  # fmt: skip
    """Check that the test split a sweep folder already holds (of ``dataset``, as recorded; its content ``kept``)
    may be kept for a sweep of ``root``: of the same data, from a sweep that kept the files ``needed`` (its selection
    split, ...), and holding none of the ids that the sweep's ``not_in_test`` bars now (e.g. cases a model added
    since trained on). A changed ``seed`` or test ``fraction`` keeps the split, so that every candidate compares on
    the same cases, and is said on stderr.

    Raises:
        DatasetError: a split of other data, a folder of a sweep that ranked its candidates on its test split, or a
            split holding cases ``not_in_test`` bars.
    """
    if dataset != str(root):
        raise DatasetError(f"{test_file}: holds the test split of another dataset ({dataset}); use another --out "
                           "zoo or task name.")  # fmt: skip
    if not all(p.is_file() for p in needed):
        raise DatasetError(f"{test_file.parent}: made by a sweep that ranked its candidates on the test split "
                           "itself; start a new sweep (another --out zoo or task name) to get a separate selection "
                           "split.")  # fmt: skip
    kept = kept or {}
    barred = sorted({str(c.get("id")) for c in kept.get("cases") or []} & {str(i) for i in not_in_test})
    if barred:
        raise DatasetError(f"{test_file}: the kept test split holds {', '.join(barred)}, which not_in_test now bars; "
                           "start a new sweep (another --out zoo or task name) to draw a test split without them.")  # fmt: skip
    drawn = {"seed": kept.get("seed"), "test_fraction": kept.get("fraction")}
    asked = {"seed": seed, "test_fraction": fraction}
    changed = [k for k in drawn if None not in (asked[k], drawn[k]) and float(drawn[k]) != float(asked[k])]
    if changed:
        was = ", ".join(f"{k} {drawn[k]}" for k in changed)
        now = ", ".join(f"{k} {asked[k]}" for k in changed)
        print(f"modelselector: {test_file}: kept as drawn with {was} (the sweep now says {now}), so that every "
              "candidate compares on the same cases; start a new sweep for a new split.", file=sys.stderr)  # fmt: skip


def draw_test(ids: Sequence[str], seed: int, n_test: int, not_in_test: Iterable[str], root: PathLike,
              unit: tuple[str, str] = ("case", "dataset")) -> tuple[list[int], list[int]]:  # fmt: skip
    """The positions of ``ids`` in a seeded random order, and the first ``n_test`` of them whose ids
    ``not_in_test`` does not name (e.g. the current model's training cases): the test split.

    Args:
        unit: what an id names and what holds them, for the messages (``("image", "folder")``).

    Raises:
        DatasetError: ``not_in_test`` names none of ``ids`` (ids of another form, which would protect nothing), or
            too few ids are left outside it.
    """
    noun, whole = unit
    barred = set(not_in_test)
    # the list may name cases of other data too (a current model's training cases), but if it names none of these
    # its ids are of another form and protect nothing from the test split
    if barred and not barred & set(ids):
        raise DatasetError(f"{root}: not_in_test names no {noun} of this {whole} (e.g. {sorted(barred)[0]}); use its "
                           f"{noun} ids, such as {ids[0]}.")  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(ids)).tolist()
    test = [i for i in order if ids[i] not in barred][:n_test]
    if len(test) < n_test:
        raise DatasetError(
            f"{root}: only {len(test)} {noun}(s) outside not_in_test; the test split needs {n_test}."
        )
    return order, test


__all__ = ["check_earlier_split", "draw_test", "read_split", "write_split"]
