"""The Slicer module's job runner with real child processes and real MRML scenes (``slicer-core``).

The command runs through a launcher that starts the real Python as its own child and waits for it, as
``PythonSlicer`` does inside Slicer; the launcher writes that child's process id to a file so that the tests
can check that cancelling ends both. A job is bound to its input volume node and that node's scene: closing the
scene or removing the volume mid-run cancels it and nothing is attached anywhere.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "ModelSelector"

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core) for MRML classes")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found has no MRML classes", allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("the process checks read /proc", allow_module_level=True)

sys.path.insert(0, str(MODULE_DIR))
from ModelSelectorSupport import jobs, processes  # noqa: E402

import ModelSelector as msm  # noqa: E402

MODEL = "TinyTest"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs, read from /proc (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """The self-test's zoo: one tiny untrained 3D segmentation bundle."""
    return msm.make_tiny_zoo(str(tmp_path_factory.mktemp("zoo")))


@pytest.fixture
def launcher(tmp_path):
    """An executable that runs ``python ARGS`` as its child and waits for it (like PythonSlicer); it reports
    its own start-up with the library's PROGRESS lines."""
    path = tmp_path / "launcher.py"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import subprocess, sys
        from ModelSelectorLib.progress import progress_bar
        for _ in progress_bar(range(4), desc="starting Python"):  # PROGRESS lines, as the library prints them
            pass
        child = subprocess.Popen([{sys.executable!r}, *sys.argv[1:]])
        with open({str(tmp_path / "child.pid")!r}, "w") as f:
            f.write(str(child.pid))
        sys.exit(child.wait())
        """))  # fmt: skip
    path.chmod(0o755)
    return path


class LaunchedLogic(msm.ModelSelectorLogic):
    """The module's logic, with the child Python started through a launcher."""

    def __init__(self, launcherPath: Path, scene=None):
        super().__init__(scene)
        self.launcherPath = str(launcherPath)

    def pythonExecutable(self) -> str:
        return self.launcherPath


def _volume(scene, seed: int = 1, name: str = "Patient"):
    return msm.make_test_volume(scene, np.random.default_rng(seed), name)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _running_tree(job, launcher: Path, timeout: float = 60.0) -> tuple[int, int]:
    """Poll ``job`` until its current launcher has started the real Python; (launcher pid, child pid)."""
    pid_file = launcher.parent / "child.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert not job.poll(), "the job ended before it could be interrupted"
        text = pid_file.read_text() if pid_file.is_file() else ""
        if job.child is not None and text and _parent(int(text)) == job.child.pid:
            return job.child.pid, int(text)
        time.sleep(0.05)
    raise AssertionError("the launcher did not start its child")


def _no_results(scene) -> bool:
    return all(
        scene.GetNumberOfNodesByClass(c) == 0 for c in ("vtkMRMLSegmentationNode", "vtkMRMLMarkupsNode")
    )


def test_child_process_merges_output_and_reports_exit_status():
    code = "import sys; print('out', flush=True); print('PROGRESS 0.5 half', file=sys.stderr, flush=True); sys.exit(3)"
    child = processes.ChildProcess([sys.executable, "-c", code], {"PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() == 3
    assert child.newLines() == ["out", "PROGRESS 0.5 half"]


def test_kill_process_tree_ends_the_launcher_and_its_child(launcher):
    child = processes.ChildProcess([str(launcher), "-c", "import time; time.sleep(120)"], {})
    pid_file = launcher.parent / "child.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    grandchild = int(pid_file.read_text())
    assert processes.descendantPids(child.pid) == [grandchild]
    ended = child.kill(timeout=5)
    assert set(ended) == {child.pid, grandchild}
    assert not _alive(child.pid) and not _alive(grandchild)


def test_progress_lines_drive_the_callback(tiny_zoo, launcher):
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    progress = []
    (node,) = LaunchedLogic(launcher, scene).applyModels(volume, [MODEL], str(tiny_zoo),
                                                        progressCallback=lambda f, t: progress.append((f, t)))  # fmt: skip
    assert node.GetScene() is scene and node.GetNodeReference("referenceImageGeometryRef") is volume
    assert (0.25, "starting Python") in progress, progress
    assert all(0.0 <= f <= 1.0 for f, _ in progress) and progress[-1][0] == pytest.approx(1.0)


def test_closing_the_scene_mid_run_ends_the_processes_and_attaches_nothing(
    tiny_zoo, launcher, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's temporary folders land here
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene, name="PatientA")
    job = LaunchedLogic(launcher, scene).startApplyModels(volume, [MODEL], str(tiny_zoo))
    launcher_pid, python_pid = _running_tree(job, launcher)

    scene.Clear(0)  # File > Close scene
    assert not _alive(launcher_pid) and not _alive(python_pid), "the run survived the scene"
    other = _volume(scene, seed=2, name="PatientB")  # the next patient gets the same node ID
    assert other.GetID() == volume.GetID()
    with pytest.raises(msm.ModelSelectorCancelled, match="scene was closed"):
        while not job.poll():
            time.sleep(0.05)
    assert _no_results(scene)
    assert job.result == [] and job.poll() is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ModelSelector-")], "temporary files left"


def test_removing_the_volume_mid_run_cancels_and_leaves_no_orphan(tiny_zoo, launcher):
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    job = LaunchedLogic(launcher, scene).startApplyModels(volume, [MODEL, MODEL], str(tiny_zoo))
    while not job.result:  # let the first model finish and attach its result
        assert not job.poll()
        time.sleep(0.05)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    launcher_pid, python_pid = _running_tree(job, launcher)

    scene.RemoveNode(volume)
    assert not _alive(launcher_pid) and not _alive(python_pid)
    with pytest.raises(msm.ModelSelectorCancelled, match="input volume was removed"):
        job.poll()
    assert _no_results(scene), "a result of the removed volume stayed in the scene"
    assert not os.path.exists(job.tempDir)


def test_two_patients_in_a_row_each_result_stays_with_its_volume(tiny_zoo, launcher):
    """Patient A's run is interrupted by closing the scene; patient B (same node ID) is then run to the end;
    only B's result exists, attached to B's node object."""
    scene = slicer.vtkMRMLScene()
    logic = LaunchedLogic(launcher, scene)
    patient_a = _volume(scene, seed=1, name="PatientA")
    job_a = logic.startApplyModels(patient_a, [MODEL], str(tiny_zoo))
    _running_tree(job_a, launcher)
    scene.Clear(0)
    patient_b = _volume(scene, seed=2, name="PatientB")
    job_b = logic.startApplyModels(patient_b, [MODEL], str(tiny_zoo))
    with pytest.raises(msm.ModelSelectorCancelled):
        while not job_a.poll():
            time.sleep(0.05)
    (node,) = job_b.wait()
    assert node.GetScene() is scene
    assert node.GetNodeReference("referenceImageGeometryRef") is patient_b
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_result_goes_to_the_volume_scene_not_the_logic_scene(tiny_zoo):
    """A volume of another scene than the logic's: the result is added to the volume's own scene."""
    logic_scene, patient_scene = slicer.vtkMRMLScene(), slicer.vtkMRMLScene()
    volume = _volume(patient_scene)
    (node,) = msm.ModelSelectorLogic(logic_scene).applyModels(volume, MODEL, str(tiny_zoo))
    assert node.GetScene() is patient_scene and _no_results(logic_scene)


def test_a_job_needs_its_volume_in_a_scene(tiny_zoo):
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    scene.RemoveNode(volume)
    with pytest.raises(ValueError, match="in the scene"):
        msm.ModelSelectorLogic().startApplyModels(volume, MODEL, str(tiny_zoo))


def test_user_cancel_keeps_finished_results_and_stops_the_rest(tiny_zoo, launcher):
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    job = LaunchedLogic(launcher, scene).startApplyModels(volume, [MODEL, MODEL], str(tiny_zoo))
    while not job.result:
        assert not job.poll()
        time.sleep(0.05)
    launcher_pid, python_pid = _running_tree(job, launcher)
    job.cancel()
    assert not _alive(launcher_pid) and not _alive(python_pid)
    with pytest.raises(msm.ModelSelectorCancelled, match=jobs.USER_CANCELLED):
        job.poll()
    (node,) = [scene.GetNthNodeByClass(0, "vtkMRMLSegmentationNode")]
    assert node.GetNodeReference("referenceImageGeometryRef") is volume
