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


def test_polling_never_blocks_on_a_process_that_left_a_child_holding_its_output():
    """A process that ends while a process it started keeps the output pipe open: each poll returns at once
    (the widget polls from Qt's main thread), and the exit status arrives after the grace period."""
    code = (
        "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(c.pid, flush=True)"
    )
    child = processes.ChildProcess([sys.executable, "-c", code], {})
    child.OUTPUT_GRACE = 1.0
    longest, status, lines = 0.0, None, []
    deadline = time.monotonic() + 30
    while status is None and time.monotonic() < deadline:
        start = time.monotonic()
        status = child.poll()
        longest = max(longest, time.monotonic() - start)
        lines += child.newLines()
        time.sleep(0.02)
    os.kill(int(lines[0]), 9)
    assert status == 0 and longest < 0.5, longest


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
    assert job.result == []
    with pytest.raises(msm.ModelSelectorCancelled, match="scene was closed"):  # never "done" after a cancel
        job.poll()
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
    # MRML leaves a removed node's display and storage nodes behind: they go too
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationDisplayNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationStorageNode") == 0
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


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An executable run in place of Python (a real child process): ``body`` sees the command line as argv."""
    path = tmp_path / "fake_python.py"
    path.write_text(f"#!{sys.executable}\nimport json, os, signal, sys\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("signum, cause", [("SIGKILL", "running out of memory"), ("SIGSEGV", "crash")])
def test_a_process_killed_by_a_signal_says_which_and_what_to_do(tmp_path, signum, cause):
    """The out-of-memory killer (SIGKILL) or a crash (SIGSEGV) ends the child without a word: say so."""
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    fake = _fake_python(
        tmp_path, f"print('PROGRESS 0.1 loading', flush=True)\nos.kill(os.getpid(), signal.{signum})\n"
    )
    with pytest.raises(msm.ModelSelectorProcessError) as info:
        LaunchedLogic(fake, scene).findModels(volume, str(tmp_path))
    number = int(getattr(__import__("signal"), signum))
    assert info.value.returncode == -number
    message = str(info.value)
    assert message.startswith(f"the model process was killed by signal {number} ({signum}; "), message
    assert cause in message and "without a message" not in message
    assert message.split("): ", 1)[1], "no remedy"


def test_a_launcher_that_reports_its_childs_signal_as_an_exit_status_says_which(tmp_path):
    """A shell launcher reports a child killed by SIGKILL as exit status 137 (128 + 9): that is the signal's
    message too, not the child's last progress line."""
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    fake = tmp_path / "launcher.sh"
    child = (
        "import os, signal; print('PROGRESS 0.1 loading', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    fake.write_text(f'#!/bin/bash\n"{sys.executable}" -c "{child}"\nstatus=$?\nexit $status\n')
    fake.chmod(0o755)
    with pytest.raises(msm.ModelSelectorProcessError) as info:
        LaunchedLogic(fake, scene).findModels(volume, str(tmp_path))
    assert info.value.returncode == 137
    assert str(info.value).startswith("the model process was killed by signal 9 (SIGKILL; "), str(info.value)


def test_the_panels_fit_threshold_reaches_the_selection_both_ways(tmp_path):
    """The fit threshold is passed to ``select`` (a model scored below 0.5 fits at a lower threshold); it used to
    be applied to the answer afterwards, so it could only take fits away."""
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    fake = _fake_python(tmp_path, """
        thr = float(sys.argv[sys.argv.index("--threshold") + 1]) if "--threshold" in sys.argv else 0.5
        fits = 0.3 >= thr
        model = {"name": "m", "score": 0.3, "fits": fits, "answer": "yes" if fits else "no"}
        print(json.dumps({"input": sys.argv[2], "fits": fits, "models": [model]}), flush=True)
        """)  # fmt: skip
    logic = LaunchedLogic(fake, scene)
    assert [m["fits"] for m in logic.findModels(volume, str(tmp_path), threshold=0.2)] == [True]
    assert [m["fits"] for m in logic.findModels(volume, str(tmp_path), threshold=0.4)] == [False]
    assert [m["fits"] for m in logic.findModels(volume, str(tmp_path))] == [False]  # the library's 0.5


def test_non_finite_progress_is_ignored(tmp_path):
    """``PROGRESS nan`` (or inf) from the child never reaches the callback (the widget rounds it to an int)."""
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    fake = _fake_python(tmp_path, """
        for value in ("nan", "inf", "-inf", "0.5"):
            print(f"PROGRESS {value} step", flush=True)
        print(json.dumps({"input": sys.argv[4], "fits": False, "models": []}), flush=True)
        """)  # fmt: skip
    progress = []
    logic = LaunchedLogic(fake, scene)
    assert logic.findModels(volume, str(tmp_path), progressCallback=lambda f, t: progress.append(f)) == []
    assert progress == [0.5, 1.0]
    # the answer names the volume, not the deleted temporary file it was written to
    assert logic.lastFindResult["input"] == "volume 'Patient'"


def test_finding_models_shows_each_step_of_the_selection_on_the_progress_bar():
    """The real ``select`` run by the module says its steps (reading, embedding, then each model it verifies) in
    PROGRESS lines, which reach the callback with their fraction, up to 1, and the answer still arrives."""
    from ModelSelectorLib.resources import default_zoo_path

    zoo = default_zoo_path()
    if not (zoo / "index").is_dir():
        pytest.skip("the bundled zoo has no index")
    scene = slicer.vtkMRMLScene()
    progress = []
    models = msm.ModelSelectorLogic(scene).findModels(_volume(scene), str(zoo),
                                                      progressCallback=lambda f, t: progress.append((f, t)))  # fmt: skip
    steps = [t for _, t in progress]
    assert list(dict.fromkeys(steps))[:2] == ["reading the image", "embedding the image"], progress
    verified = {t[len("verifying ") :] for t in steps if t.startswith("verifying ")}
    assert verified and verified <= {m["name"] for m in models}, progress
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_errors_name_the_volume_not_the_temporary_file(tmp_path):
    """A label map selected as the input: the library's refusal names the volume node, not the deleted
    ``/tmp/ModelSelector-*/input.nrrd`` it was written to."""
    import vtk
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    array = np.zeros((8, 32, 32), dtype=np.int16)
    array[:, 4:16, 4:28], array[:, 16:28, 4:28] = 1, 2  # three values in blocks: a label map
    image = vtk.vtkImageData()
    image.SetDimensions(32, 32, 8)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName("Lung labels")
    volume.SetAndObserveImageData(image)
    scene.AddNode(volume)
    with pytest.raises(msm.ModelSelectorProcessError) as info:
        msm.ModelSelectorLogic(scene).applyModels(volume, ["dx-chest-lungs"])
    message = str(info.value)
    assert "volume 'Lung labels'" in message and "label map" in message, message
    assert "input.nrrd" not in message and tempfile.gettempdir() not in message, message


def test_a_volume_without_voxels_says_so(tmp_path):
    import vtk

    scene = slicer.vtkMRMLScene()
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName("Empty")
    volume.SetAndObserveImageData(vtk.vtkImageData())
    scene.AddNode(volume)
    with pytest.raises(ValueError, match="volume 'Empty' holds no voxels") as info:
        msm.ModelSelectorLogic(scene).startFindModels(volume, str(tmp_path))
    assert "disk" not in str(info.value)


def test_a_failed_job_never_polls_as_done(tmp_path):
    """A console user's timer keeps firing after the poll that raised: every later poll raises the same error,
    where it used to return True, the answer of a job done with its results attached."""
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    fake = _fake_python(
        tmp_path, "print('modelselector: error: the zoo is broken; rebuild it', flush=True)\nsys.exit(1)\n"
    )
    job = LaunchedLogic(fake, scene).startFindModels(volume, str(tmp_path))
    with pytest.raises(msm.ModelSelectorProcessError, match="the zoo is broken") as first:
        while not job.poll():
            time.sleep(0.05)
    for _ in range(2):
        with pytest.raises(msm.ModelSelectorProcessError) as again:
            job.poll()
        assert again.value is first.value and job.result is None


EXIT_DURING_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
import slicer, numpy as np
import ModelSelector as msm

class Logic(msm.ModelSelectorLogic):
    def pythonExecutable(self):
        return sys.argv[2]

scene = slicer.vtkMRMLScene()
volume = msm.make_test_volume(scene, np.random.default_rng(0), "Patient")
job = Logic(scene).startFindModels(volume, sys.argv[3])
while job.child is None:
    job.poll()
time.sleep(1.0)
print(job.child.pid, job.tempDir, flush=True)
job = None  # the caller drops the job without cancelling it, then Python exits
"""


def test_a_job_still_running_when_python_exits_is_ended_with_its_copy_of_the_volume(tmp_path):
    """A run started from the console (``startFindModels``) and not waited for: when Python exits, its process
    ends and the temporary copy of the patient's volume is removed, where both stayed behind."""
    import subprocess

    fake = _fake_python(tmp_path, "import time\nprint('PROGRESS 0.1 loading', flush=True)\ntime.sleep(120)\n")
    script = tmp_path / "exit_during_run.py"
    script.write_text(EXIT_DURING_RUN)
    run = subprocess.run([sys.executable, str(script), str(MODULE_DIR), str(fake), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    pid, temp_dir = run.stdout.split()
    assert not _alive(int(pid)), "the model process outlived the Python that started it"
    assert not os.path.exists(temp_dir), "the temporary copy of the volume stayed behind"


@pytest.mark.parametrize("components", [2, 5])
def test_a_volume_of_several_frames_per_voxel_says_so_not_the_disk(tmp_path, components):
    """A multi-frame image loaded as one volume: the writer takes 1, 3 or 4 values per voxel, and failed on the
    others as if the disk were full."""
    import vtk

    scene = slicer.vtkMRMLScene()
    image = vtk.vtkImageData()
    image.SetDimensions(16, 16, 4)
    image.AllocateScalars(vtk.VTK_FLOAT, components)
    volume = slicer.vtkMRMLVectorVolumeNode()
    volume.SetName("Frames")
    volume.SetAndObserveImageData(image)
    scene.AddNode(volume)
    with pytest.raises(ValueError, match=f"volume 'Frames' has {components} values per voxel") as info:
        msm.ModelSelectorLogic(scene).startFindModels(volume, str(tmp_path))
    assert "disk" not in str(info.value)
    assert not [p for p in Path(tempfile.gettempdir()).glob("ModelSelector-*") if (p / "input.nrrd").exists()]


def test_a_node_that_is_not_a_volume_is_named_as_such(tmp_path):
    scene = slicer.vtkMRMLScene()
    sequence = slicer.vtkMRMLSequenceNode()
    sequence.SetName("Cine")
    scene.AddNode(sequence)
    with pytest.raises(ValueError, match="'Cine' is a vtkMRMLSequenceNode, not a volume; .*proxy volume"):
        msm.ModelSelectorLogic(scene).startFindModels(sequence, str(tmp_path))
