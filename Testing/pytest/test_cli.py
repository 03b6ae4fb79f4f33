"""The ``modelselector`` command: help lists the subcommands; errors are one line, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ModelSelectorLib.cli import build_parser, main

EXPECTED = {"demo", "apply", "train", "zoo"}


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert EXPECTED <= set(sub.choices)


def test_bad_input_is_one_line_on_stderr(tmp_path, capsys):
    code = main(
        [
            "apply",
            "--zoo",
            str(tmp_path / "nozoo"),
            "--model",
            "x",
            str(tmp_path / "missing.nii.gz"),
            "--out",
            str(tmp_path / "o.seg.nrrd"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("modelselector: error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_module_entry_point_runs_in_a_separate_process(tmp_path):
    """The Slicer module runs the library as ``python -m ModelSelectorLib``; errors stay one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "ModelSelectorLib", "zoo", "list", "--zoo", str(tmp_path / "nozoo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("modelselector: error:")
    assert "Traceback" not in proc.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """``modelselector zoo list | head -1``: the pipe closes before the table is written; no traceback."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "ModelSelectorLib", "zoo", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err
    assert err == "", err
