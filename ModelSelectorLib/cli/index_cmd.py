"""``modelselector index``: build, update, calibrate and check the zoo's prototype index."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..resources import default_zoo_path
from ..zoo.catalog import Zoo
from .args import positive_int

#: printed when the selector is calibrated without labelled images (build, add and calibrate without --data)
WITHOUT_DATA = (
    "modelselector: warning: calibrated without labelled images (--data): on each model's own example inputs "
    "and synthetic pictures only, whose operating points accept more images of other kinds; pass --data DIR "
    "(the shared data) to calibrate on the development images."
)


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO, else Resources/zoo)"
    )
    q.add_argument("--index", type=Path, default=None, help="index folder (default: ZOO/index)")


def register(sub: Any) -> None:
    """Add the ``index`` command and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "index",
        help="build, update, calibrate and check the prototype index of a zoo",
        description=(
            "The selector's index: hnswlib (cosine) over every model's prototypes, with a JSON sidecar, saved "
            "atomically in ZOO/index. Make prototypes first with `modelselector prototypes`."
        ),
    )
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = isub.add_parser("build", help="index every model's prototypes and calibrate the selector")
    _common(q)
    _calibration_data(q)
    q.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="skip the calibration")
    q.set_defaults(func=cmd_build)

    q = isub.add_parser("add", help="add (or refresh) one model's prototypes")
    _common(q)
    q.add_argument("--model", required=True, metavar="NAME")
    q.add_argument("--version", dest="model_version", default=None, help="model version (default: current)")
    q.add_argument(
        "--calibrate",
        action="store_true",
        help="recalibrate the selector afterwards (with --data: on the development images; without, refused "
        "when that would replace a calibration made on them)",
    )
    _calibration_data(q)
    q.set_defaults(func=cmd_add)

    q = isub.add_parser("remove", help="remove one model from the index")
    _common(q)
    q.add_argument("--model", required=True, metavar="NAME")
    q.set_defaults(func=cmd_remove)

    q = isub.add_parser(
        "calibrate",
        help="recalibrate the score weights and each model's operating point",
        description="Score the development images of the protocol split (or, without --data, the models' "
        "exemplar files and synthetic references) against every model; fit the score's weights, choose the "
        "model-alone signals and one operating point per model, and store them with their false-accept and "
        "false-reject rates in the index sidecar. Without --data it warns, and it refuses to replace a "
        "calibration made on development images.",
    )
    _common(q)
    _calibration_data(q)
    q.set_defaults(func=cmd_calibrate)

    q = isub.add_parser(
        "check", help="check that the index matches the zoo; print each model's operating point"
    )
    _common(q)
    q.set_defaults(func=cmd_check)


def _calibration_data(q: argparse.ArgumentParser) -> None:
    q.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="calibrate on the development part of the protocol split of this data folder")  # fmt: skip
    q.add_argument("--split-file", type=Path, default=None, metavar="JSON",
                   help="protocol split (default: the bundled encoder's split.json)")  # fmt: skip
    q.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use at most N development images (class by class, seeded)")  # fmt: skip


def _cases(args: argparse.Namespace, zoo: Zoo) -> tuple[Any, str]:
    """Development images of the protocol split when --data or --split-file is given, else (None, "")."""
    if args.data is None and args.split_file is None:
        return None, ""
    from ..errors import InputError
    from ..evaluation.selection_cases import development_images, load_protocol

    split = load_protocol(args.split_file, args.data)
    if not split.root.is_dir():
        raise InputError(f"{split.root}: the split's data folder is not there; pass it with --data.")
    return development_images(split, zoo, args.limit)


def _paths(args: argparse.Namespace) -> tuple[Zoo, Path]:
    from ..selection.index import default_index_dir

    zoo = Zoo(args.zoo if args.zoo is not None else default_zoo_path())
    return zoo, (args.index if args.index is not None else default_index_dir(zoo))


def _q(path: Any) -> str:
    """A path as a shell word, for the commands printed in messages."""
    return shlex.quote(str(path))


def _summary(idx: Any) -> str:
    parts = [f"{n} ({len(idx.labels_of(n))})" for n in idx.model_names()]
    return f"{len(idx)} prototype(s) of {len(parts)} model(s): {', '.join(parts)}"


def _print_calibration(cal: dict, zoo: Zoo, idx: Any = None, key: str = "data-free+exemplar:verify") -> None:
    """Each model's operating point with its false-accept and false-reject rates (one setting), and the indexed
    models that the calibration does not know (they use the pooled point)."""
    from ..selection.scoring import uncalibrated_models

    recalibrate = f"`modelselector index calibrate --zoo {_q(zoo.path)} --data DIR`"
    setting = ((cal or {}).get("settings") or {}).get(key)
    if not setting:
        print(f"  not calibrated for this version of the selector; run {recalibrate}.")
        return
    print(f"  calibrated on {cal.get('images', '?')}; setting {key}")
    for name, m in sorted((setting.get("models") or {}).items()):
        far = "-" if m.get("far") is None else f"{m['far']:.3f}"
        frr = "-" if m.get("frr") is None else f"{m['frr']:.3f}"
        own = "pooled" if m.get("pooled") else "own"
        print(f"  {name:28s} operating point {m['threshold']:7.3f} ({own:6s}) false-accept {far} "
              f"false-reject {frr}  (positives {m['n_positive']}, negatives {m['n_negative']})")  # fmt: skip
    for name in uncalibrated_models(setting, idx.model_names() if idx is not None else []):
        print(f"  {name:28s} no operating point of its own (added after the calibration): uses the pooled point "
              f"{float(setting.get('threshold', 0.0)):.3f}; recalibrate with {recalibrate}")  # fmt: skip
    kept = {t: sorted(v) for t, v in (setting.get("verify") or {}).items()}
    print(f"  model-alone signals kept: {kept or 'none'}")
    print("  (rates on the calibration images that set the operating points, of the domain match alone: a "
          "held-out test is `modelselector evaluate-selection`)")  # fmt: skip


def _refuse_replacing_a_better_calibration(out: Path, zoo: Any) -> None:
    """Refuse to build an index calibrated without labelled images over one calibrated with them."""
    from ..selection.calibration import refuse_replacing_labelled_calibration

    refuse_replacing_labelled_calibration(out, zoo, f"pass --data DIR to calibrate the new index on them, or "
                                                    f"build it with --no-calibrate and run `modelselector index "
                                                    f"calibrate --zoo {_q(zoo.path)} --data DIR`")  # fmt: skip


def cmd_build(args: argparse.Namespace) -> int:
    from ..atomic import writer_lock
    from ..selection.calibration import build_index

    zoo, out = _paths(args)
    cases, text = _cases(args, zoo) if args.calibrate else (None, "")
    # the folder's write lock for the whole build: an `index add` meanwhile waits and then adds to the new
    # index, instead of being overwritten by it
    with writer_lock(out):
        zoo.reload()  # the catalog as the writer before this one left it
        if args.calibrate and cases is None:  # before any work: the index it replaces may hold a better one
            _refuse_replacing_a_better_calibration(out, zoo)
        replaced = "" if args.calibrate else _calibration_of(out, zoo)
        idx = build_index(zoo, calibrate=args.calibrate, cases=cases, description=text)
        idx.save(out)
    print(f"Index saved to {out}: {_summary(idx)}")
    if args.calibrate:
        _print_calibration(idx.calibration, zoo, idx)
        if cases is None:
            print(WITHOUT_DATA, file=sys.stderr)
    elif replaced:
        print(f"modelselector: note: the index replaced was calibrated ({replaced}); this one is not, so every model "
              f"takes fixed weights and the pooled threshold until `modelselector index calibrate --zoo "
              f"{_q(zoo.path)} --data DIR`.", file=sys.stderr)  # fmt: skip
    return 0


def _calibration_of(out: Path, zoo: Any) -> str:
    """What the calibration of the index in ``out`` was made on (empty without one, or an index that does not
    load)."""
    from ..errors import ModelSelectorError
    from ..selection.index import SIDECAR, ZooIndex

    try:
        old = ZooIndex.load(out, zoo) if (out / SIDECAR).is_file() else None
    except ModelSelectorError:
        return ""
    calibration = old.calibration if old is not None else {}
    return str(calibration.get("images") or "on images") if calibration.get("settings") else ""


def cmd_add(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..selection.calibration import calibrate, refuse_weaker_calibration
    from ..selection.index import updating_index

    zoo, out = _paths(args)
    chosen = [a for a in ("data", "split_file", "limit") if getattr(args, a) is not None]
    if chosen and not args.calibrate:
        raise InputError("--data, --split-file and --limit choose the images of a calibration: add --calibrate, "
                         "or leave them out.")  # fmt: skip
    remedy = (f"pass --data DIR to recalibrate on them, or leave --calibrate out and run `modelselector index "
              f"calibrate --zoo {_q(zoo.path)} --data DIR`")  # fmt: skip
    with updating_index(out, zoo) as idx:
        cases, text = _cases(args, zoo) if args.calibrate else (None, "")
        if args.calibrate and cases is None:  # before any change: a refusal leaves the index as it was
            refuse_weaker_calibration(idx, remedy)
        n = idx.add_model(zoo, args.model, args.model_version)
        if args.calibrate:
            calibrate(idx, zoo, cases=cases, description=text)
        idx.save(out)
    print(f"Added {n} prototype(s) of {args.model} to {out}; now {_summary(idx)}")
    if not args.calibrate and idx.operating_points(args.model):
        print(
            "Its calibrated operating point is kept: its prototypes and version are those it was calibrated with."
        )
    elif not args.calibrate:
        print(f"The calibration was made without these prototypes of {args.model}: it takes the pooled operating point; "
              f"recalibrate with `modelselector index calibrate --zoo {_q(zoo.path)} --data DIR`.")  # fmt: skip
    elif cases is None:
        print(WITHOUT_DATA, file=sys.stderr)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from ..selection.index import updating_index

    zoo, out = _paths(args)
    with updating_index(out, zoo) as idx:
        n = idx.remove_model(args.model)
        idx.save(out)
    print(f"Removed {n} prototype(s) of {args.model} from {out}; now {_summary(idx)}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..selection.calibration import calibrate, refuse_weaker_calibration
    from ..selection.index import updating_index

    zoo, out = _paths(args)
    with updating_index(out, zoo) as idx:
        cases, text = _cases(args, zoo)
        if cases is None:
            refuse_weaker_calibration(idx, "pass --data DIR (the data folder of the protocol split)")
        cal = calibrate(idx, zoo, cases=cases, description=text)
        idx.save(out)
    print(f"Calibration saved to {out}:")
    _print_calibration(cal, zoo, idx)
    if cases is None:
        print(WITHOUT_DATA, file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..selection.encoder import default_encoder
    from ..selection.index import ZooIndex
    from ..selection.prototypes import encoder_id

    zoo, out = _paths(args)
    idx = ZooIndex.load(out, zoo)
    idx.check_against(zoo, encoder_id(default_encoder()))
    print(f"The index {out} matches the zoo {zoo.path}: {_summary(idx)}")
    _print_calibration(idx.calibration, zoo, idx)
    _print_unknown_domains(zoo, idx)
    return 0


def _print_unknown_domains(zoo: Any, idx: Any) -> None:
    """Name the models whose modality and region the bundled encoder has no class for."""
    from ..selection.encoder import default_encoder
    from ..selection.scoring import encoder_knows

    classes = default_encoder().classes
    cards = {name: zoo.card(name) for name in idx.model_names()}
    unknown = [
        f"{n} ({c.modality}:{c.body_region})" for n, c in cards.items() if not encoder_knows(classes, c)
    ]
    if unknown:
        print(f"  the encoder has no class for the images of {', '.join(unknown)}: its reading counts against "
              "these models for every image; they can be applied by name")  # fmt: skip
