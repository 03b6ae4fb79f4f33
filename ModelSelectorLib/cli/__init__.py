"""The ``modelselector`` command: one subcommand per user task.

Each area of the library registers its subcommands from a module in this package (``register(sub)``);
this module parses the command line, runs the chosen command, and turns every
:class:`~ModelSelectorLib.errors.ModelSelectorError` into one line on stderr and a non-zero exit status
(the full traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from typing import NoReturn, Optional

from .. import __version__
from ..errors import Cancelled, ModelSelectorError, OutputError

#: what the system refuses to write, and what the user can do about it (any other OSError is a fault: traceback)
_WRITE_REFUSALS = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some of your disk quota or write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "check its permissions or write elsewhere",
    errno.EPERM: "check its permissions or write elsewhere",
}

# Modules of this package that add subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "demo_cmd",
    "select_cmd",
    "apply_cmd",
    "train_cmd",
    "zoo_cmd",
    "encoder_cmd",
    "prototypes_cmd",
    "index_cmd",
    "evaluate_cmd",
    "starter_zoo_cmd",
    "sweep_cmd",
    "promote_cmd",
    "landmarks_cmd",
]

DESCRIPTION = """\
Find the models in a MONAI model zoo that apply to a medical image, apply them, and maintain the zoo.

Typical use:
  modelselector demo                          run the demo on the bundled sample image
  modelselector select IMAGE --zoo ZOO        which models fit this image?
  modelselector apply --zoo ZOO --model NAME IMAGE --out OUT.seg.nrrd
  modelselector train --dataset MSD_DIR --name NAME --out ZOO
  modelselector zoo list --zoo ZOO
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command (subcommand
    parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"modelselector: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="modelselector", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # an area not installed in this build
            raise
        module.register(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``modelselector`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    signal.signal(signal.SIGTERM, _terminate)  # the Slicer module's Cancel terminates the process
    try:
        if getattr(args, "device", None):  # a GPU that is not there is refused before any work is done
            from ..models.preprocessing import check_device

            args.device = check_device(args.device)  # as models load onto it: "cpu:0" is "cpu"
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("modelselector: cancelled; nothing half-written was left behind.", file=sys.stderr)
        return Cancelled.exit_code
    except BrokenPipeError:
        # the reader of the output went away (`modelselector select IMAGE | head`): stop quietly, as `cat` does,
        # and keep Python from complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ModelSelectorError as e:
        if args.debug:
            raise
        # one line whatever a library put into the message
        one_line = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"modelselector: error: {one_line}", file=sys.stderr)
        return e.exit_code
    except MemoryError as e:
        if args.debug:
            raise
        # the input checks refuse sizes no computer can hold; this is what is left: too large for this one
        print(f"modelselector: error: ran out of memory ({e or 'an allocation failed'}); the image or model is too "
              "large for this computer: crop or downsample the image, close other programs, or use a computer "
              "with more memory (--debug shows where).", file=sys.stderr)  # fmt: skip
        return 1
    except RecursionError:
        if args.debug:
            raise
        print("modelselector: error: an input is nested too deeply to read (a JSON or other file of thousands of "
              "nested levels, damaged or made to break readers); check the files given (--debug shows which "
              "step).", file=sys.stderr)  # fmt: skip
        return 1
    except OSError as e:
        if args.debug or e.errno not in _WRITE_REFUSALS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"modelselector: error: {where}{e.strerror}; {_WRITE_REFUSALS[e.errno]}.", file=sys.stderr)
        return OutputError.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
