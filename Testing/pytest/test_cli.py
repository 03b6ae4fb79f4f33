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


def test_a_disk_that_refuses_the_write_is_one_line_with_what_to_do(tmp_path, monkeypatch, capsys):
    """A full disk, a read-only folder or an unusable lock setting: one line and exit status 6, as for an
    output path; any other system error stays a traceback (a fault to report)."""
    import errno

    from ModelSelectorLib import atomic

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_json", full)
    assert main(["zoo", "init", "--zoo", str(tmp_path / "z1")]) == 6
    err = capsys.readouterr().err.strip()
    assert err.endswith("zoo.json: No space left on device; free some disk space or write elsewhere.")
    assert len(err.splitlines()) == 1
    monkeypatch.undo()
    monkeypatch.setenv("MODELSELECTOR_LOCK_TIMEOUT", "ten minutes")
    assert main(["zoo", "init", "--zoo", str(tmp_path / "z2")]) == 6
    assert "$MODELSELECTOR_LOCK_TIMEOUT='ten minutes' is not a number of seconds" in capsys.readouterr().err
    monkeypatch.delenv("MODELSELECTOR_LOCK_TIMEOUT")

    def broken(path, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(atomic, "write_json", broken)
    with pytest.raises(OSError, match="Input/output error"):
        main(["zoo", "init", "--zoo", str(tmp_path / "z3")])


@pytest.mark.parametrize("device", ["mps", "xla", "meta", "cpu:1", "hip"])
def test_a_device_that_cannot_run_models_here_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, device
):
    """Devices torch names but this machine or the weights cannot use: one line naming the device and the
    choices, exit status 2, before the zoo or the image is even looked at."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code = main(["apply", "--zoo", str(tmp_path / "nozoo"), "--model", "x", str(tmp_path / "missing.nii.gz"),
                 "--out", str(tmp_path / "o.seg.nrrd"), "--device", device])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"modelselector: error: device {device!r} ") and "use " in err and "cpu" in err


def test_devices_are_named_as_models_load_onto_them(monkeypatch):
    torch = pytest.importorskip("torch")
    from ModelSelectorLib.errors import InputError
    from ModelSelectorLib.models.preprocessing import check_device

    assert check_device("cpu") == check_device("cpu:0") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert check_device("mps") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="no Apple GPU"):
        check_device("mps")


def test_every_command_gets_the_device_as_models_load_onto_it(tmp_path, monkeypatch):
    """``cpu:0`` reaches a command as ``cpu`` (``torch.load`` knows only ``cpu``), whichever command it is."""
    pytest.importorskip("torch")
    from ModelSelectorLib.cli import promote_cmd

    seen = []
    monkeypatch.setattr(promote_cmd, "run_promote", lambda args: seen.append(args.device) or 0)
    assert main(["promote", "--zoo", str(tmp_path), "--task", "t", "--candidate", str(tmp_path), "--split",
                 str(tmp_path / "s.json"), "--device", "cpu:0"]) == 0  # fmt: skip
    assert seen == ["cpu"]
