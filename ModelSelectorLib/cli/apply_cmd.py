"""``modelselector apply``: apply a zoo model to an image and write a Slicer ``.seg.nrrd`` (segmentation)
or ``.mrk.json`` (landmarks)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, TextIO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply",
        help="apply a zoo model to an image: a .seg.nrrd (segmentation) or .mrk.json (landmarks)",
        description="Apply model --model of the zoo --zoo to IMAGE; the segmentation is written to --out in "
        "exactly the image's geometry, with the model's segment names, colours and terminology; a landmark "
        "model writes its contours as Slicer markups curves (.mrk.json, LPS mm, one closed curve per structure, "
        "point names from the model card; `modelselector landmarks apply --points` writes a point list).",
    )
    p.add_argument("image", type=Path, nargs="+",
                   help="image file (NIfTI, NRRD, MHA, PNG, ...) or DICOM series folder; several: --out is a folder "
                        "and each output is named after its image (ct.nii.gz -> ct.seg.nrrd)")  # fmt: skip
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: $MODELSELECTOR_ZOO or the bundled zoo)"
    )
    p.add_argument("--model", required=True, help="model name in the zoo")
    p.add_argument(
        "--out",
        type=str,  # as typed: a trailing separator says "a folder"
        required=True,
        help="output file: OUT.seg.nrrd (segmentation) or OUT.mrk.json (landmarks); or a folder (DIR/, or one that "
        "exists; always with several images), where each output is named after its image",
    )
    p.add_argument(
        "--series", metavar="UID", help="the DICOM series to read from a folder that holds several"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave an image whose output exists already alone: resumes an interrupted batch (outputs are "
                        "written whole or not at all, so an existing one is complete)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apply import apply_to_file, output_in_folder
    from ..errors import InputError

    zoo = _zoo(args)
    if len(args.image) == 1:  # into a folder (``--out DIR/``, or one that exists) named after the image
        into_folder = args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()
        out = output_in_folder(zoo, args.model, args.image[0], args.out) if into_folder else Path(args.out)
        if args.skip_existing and out.is_file():
            print(f"modelselector: skipped: {out} exists (--skip-existing).", file=sys.stderr)
            return 0
        print(apply_to_file(zoo, args.model, args.image[0], out, device=args.device, series_uid=args.series,
                            warn=_warn))  # fmt: skip
        return 0
    if args.series:
        raise InputError(
            "--series chooses the series of one DICOM folder; apply to one folder at a time with it."
        )
    return _run_batch(args, zoo)


def _run_batch(args: argparse.Namespace, zoo: Path) -> int:
    """Several images: each output is listed on stdout as soon as it is written, so that an interrupted batch
    leaves a record of what it finished, and the cancellation says how far it got."""
    from ..apply import apply_to_files
    from ..errors import Cancelled, InputError

    results: list[tuple[Path, Optional[Path], Optional[str]]] = []

    def done(image: Path, out: Optional[Path], why: Optional[str]) -> None:
        results.append((image, out, why))
        if out is None:
            _say(f"modelselector: skipped: {why}", sys.stderr)
        elif why is not None:
            _say(f"modelselector: skipped: {why} (--skip-existing).", sys.stderr)
        else:
            _say(str(out), sys.stdout)

    try:
        apply_to_files(zoo, args.model, args.image, Path(args.out), device=args.device, warn=_warn,
                       skip_existing=args.skip_existing, on_done=done)  # fmt: skip
    except (KeyboardInterrupt, Cancelled):
        kept = "their outputs are kept (listed above); " if results else ""
        resume = " To finish, run the same command with --skip-existing." if results else ""
        raise Cancelled(
            f"cancelled after {len(results)} of {len(args.image)} images; {kept}nothing half-written was left "
            f"behind.{resume}"
        ) from None
    existing = sum(out is not None and why is not None for _, out, why in results)
    if existing:
        print(f"modelselector: {existing} of {len(results)} outputs existed already and were left as they are.",
              file=sys.stderr)  # fmt: skip
    skipped = sum(out is None for _, out, _ in results)
    if skipped:
        print(f"modelselector: error: {skipped} of {len(results)} images were skipped (see above).",
              file=sys.stderr)  # fmt: skip
        return InputError.exit_code
    return 0


def _zoo(args: argparse.Namespace) -> Path:
    from ..resources import default_zoo_path

    return args.zoo if args.zoo is not None else default_zoo_path()


def _warn(w: str) -> None:
    _say(f"modelselector: warning: {w}", sys.stderr)


def _say(text: str, file: TextIO) -> None:
    """Print a line to ``file`` without running into a progress bar on the terminal (the bars are redrawn below
    it), and flush it at once, so that what a batch has done is on record when it is interrupted."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=file)
    file.flush()
