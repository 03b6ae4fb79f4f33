"""``modelselector zoo``: create a zoo, list and show its models, add and remove bundles."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelSelectorError
from ..resources import default_zoo_path
from ..tables import format_table
from ..zoo.bundle import read_metadata
from ..zoo.catalog import Zoo


def _add_zoo_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="zoo folder (default: $MODELSELECTOR_ZOO, else the bundled Resources/zoo)",
    )


def _zoo_path(args: argparse.Namespace) -> Path:
    return args.zoo if args.zoo is not None else default_zoo_path()


def register(sub: Any) -> None:
    """Add the ``zoo`` command and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser("zoo", help="create, list, show, add to and remove from a model zoo",
                       description="Maintain a model zoo (a folder of MONAI bundles with a zoo.json catalog).")  # fmt: skip
    zsub = p.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = zsub.add_parser("init", help="create an empty zoo")
    _add_zoo_option(q)
    q.set_defaults(func=cmd_init)

    q = zsub.add_parser("list", help="list the models of the zoo")
    _add_zoo_option(q)
    q.set_defaults(func=cmd_list)

    q = zsub.add_parser("show", help="show the model card of a model")
    q.add_argument("name", metavar="NAME")
    _add_zoo_option(q)
    q.set_defaults(func=cmd_show)

    q = zsub.add_parser("add", help="add a MONAI bundle (a new model or a new version)")
    q.add_argument("bundle", metavar="BUNDLE", type=Path, help="bundle folder")
    q.add_argument("--name", help="model name in the zoo (default: the bundle's name)")
    q.add_argument(
        "--modality",
        help="DICOM modality code (CT, MR, ...); for a standard MONAI bundle, default: its metadata's "
        "network_data_format inputs image modality",
    )
    q.add_argument("--body-region", dest="body_region",
                   help="body region (ABDOMEN, CHEST, ...; ';'-joined if several); required for standard MONAI bundles")  # fmt: skip
    q.add_argument("--trust", action="store_true",
                   help="build the whole config as MONAI would (custom code, expressions); only for bundles whose author you "
                        "trust; recorded in your trust store, so apply, select and prototypes honour it")  # fmt: skip
    _add_zoo_option(q)
    q.set_defaults(func=cmd_add)

    q = zsub.add_parser("trust", help="trust the code of a model already in the zoo (a zoo copied from someone else, "
                                      "a new trust store)")  # fmt: skip
    q.add_argument("name", metavar="NAME")
    q.add_argument("--version", dest="model_version", help="the version to trust (default: the current one)")
    _add_zoo_option(q)
    q.set_defaults(func=cmd_trust)

    q = zsub.add_parser(
        "remove",
        help="remove a model and its files (and, when the whole model goes, its prototypes from the zoo's index)",
    )
    q.add_argument("name", metavar="NAME")
    q.add_argument("--version", dest="model_version", help="remove only this version")
    _add_zoo_option(q)
    q.set_defaults(func=cmd_remove)


def cmd_init(args: argparse.Namespace) -> int:
    path = _zoo_path(args)
    existed = (path / "zoo.json").is_file()
    zoo = Zoo.create(path)
    if existed:
        print(f"{path} is already a zoo with {len(zoo)} model(s); nothing changed.")
    else:
        print(f"Created an empty zoo at {path}.")
    return 0


def _metrics(m: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()) or "-"


def cmd_list(args: argparse.Namespace) -> int:
    zoo = Zoo(_zoo_path(args))
    items = zoo.list()
    if not items:
        print(
            f"The zoo at {zoo.path} holds no models; add one with `modelselector zoo add BUNDLE --zoo {zoo.path}`."
        )
        return 0
    rows = []
    for it in items:
        if "error" in it:
            rows.append([it["name"], it["version"], "?", "?", "?", "ERROR: " + it["error"], "-"])
            continue
        labels = ", ".join(it["labels"])
        if len(labels) > 40:
            labels = labels[:37] + "..."
        rows.append([it["name"], it["version"], it["task_type"], it["modality"], it["body_region"], labels,
                     _metrics(it["metrics"])])  # fmt: skip
    print(format_table(rows, ["NAME", "VERSION", "TASK", "MODALITY", "BODY REGION", "LABELS", "METRICS"]))
    print(f"\n{len(items)} model(s) in {zoo.path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    zoo = Zoo(_zoo_path(args))
    card = zoo.card(args.name)
    path = zoo.get(args.name)
    d = card.to_dict()
    labels = d.pop("labels")
    print(f"{card.name} {card.version}  ({path})")
    print(f"versions: {', '.join(zoo.versions(args.name))}")
    for key, value in d.items():
        if value in (None, "", [], {}):
            continue
        if card.imported and key == "n_training_cases":  # MONAI metadata does not state it
            value = "not stated (an imported MONAI bundle)"
        elif isinstance(value, dict):
            value = _metrics(value)
        elif isinstance(value, list):
            value = " x ".join(str(v) for v in value)
        print(f"{key}: {value}")
    print("labels:")
    for lb in labels:
        color = " ".join(f"{c:.2f}" for c in lb.get("color", []))
        print(f"  {lb['value']:>3}  {lb['name']}  (color {color})")
    # an imported bundle's own figures: the publisher's, on data and a protocol of its own
    published = read_metadata(path).get("eval_metrics") if card.imported else None
    if isinstance(published, dict) and published:
        print(f"published by the bundle (eval_metrics, not measured here): {_metrics(published)}")
    return 0


def note_stale_index(zoo: Zoo, names: Sequence[str]) -> None:
    """After a change to models ``names`` of ``zoo``: when the zoo's index no longer matches them, say so on stderr
    with the commands that update it (`select` refuses a zoo whose index holds stale or removed models, and does not
    offer a model the index does not hold)."""
    from ..selection.index import SIDECAR, default_index_dir, load_index

    if not (default_index_dir(zoo) / SIDECAR).is_file():
        return
    try:
        problems = load_index(zoo.reload()).problems(zoo)
    except ModelSelectorError:  # an index that does not load says so itself at the next `select`
        return
    for problem in problems:
        if any(repr(n) in problem for n in names):
            print(f"modelselector: note: the zoo's index needs updating: {problem}", file=sys.stderr)


def cmd_add(args: argparse.Namespace) -> int:
    zoo = Zoo(_zoo_path(args))
    entry = zoo.add(args.bundle, name=args.name, modality=args.modality, body_region=args.body_region,
                    trust=args.trust)  # fmt: skip
    print(f"Added {entry['name']} version {entry['version']} to the zoo at {zoo.path}.")
    note_stale_index(zoo, [entry["name"]])
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    zoo = Zoo(_zoo_path(args))
    path, digest = zoo.trust(args.name, args.model_version)
    print(f"Trusted {args.name} version {path.name} of the zoo at {zoo.path} as its configs and code are now "
          f"(sha256 {digest[:12]}); apply, select and prototypes build it as MONAI would while they stay so.")  # fmt: skip
    return 0


def _indexed_models(sidecar: Path) -> set[str]:
    """The models an index's sidecar lists (none when there is no readable one)."""
    try:
        return set(json.loads(sidecar.read_text(encoding="utf-8"))["models"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def cmd_remove(args: argparse.Namespace) -> int:
    from ..selection.index import SIDECAR, default_index_dir, updating_index

    zoo = Zoo(_zoo_path(args))
    index_dir = default_index_dir(zoo)
    indexed = args.name in _indexed_models(index_dir / SIDECAR)
    if args.name in zoo or args.model_version or not indexed:
        zoo.remove(args.name, version=args.model_version)
        what = f"{args.name} version {args.model_version}" if args.model_version else args.name
        print(f"Removed {what} from the zoo at {zoo.path}.")
    else:  # an earlier removal stopped between the catalog and the index: finish it
        print(f"{args.name} is no longer in the zoo at {zoo.path}; its prototypes are still in the index.")
    if args.name not in zoo and indexed:
        # an index that lists a model the zoo no longer holds stops every selection; it goes from there too
        with updating_index(index_dir) as idx:
            if args.name in idx.models:
                n = idx.remove_model(args.name)
                idx.save(index_dir)
                print(f"Removed its {n} prototype(s) from the zoo's index.")
    note_stale_index(zoo, [args.name])  # another version became current
    return 0
