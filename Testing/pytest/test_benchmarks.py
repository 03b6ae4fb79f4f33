"""The GPU check's judgement (``benchmarks/bench_cuda.py``): it must report a GPU answer that differs from the
CPU's. CI has no GPU, so the script itself runs here with the CPU on both sides."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _bench_cuda():
    spec = importlib.util.spec_from_file_location("bench_cuda", ROOT / "benchmarks" / "bench_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_label_map_or_points_that_differ_are_reported(oblique_image):
    from ModelSelectorLib.models.base import Prediction

    bench = _bench_cuda()
    labels = (oblique_image.array > 50).astype(np.uint8)
    moved = labels.copy()
    moved[4:8, 6:14, 8] = 0  # one face of the box: 32 of its 320 voxels, 0.6 % of the image

    def seg(arr):
        return Prediction("m", "1", oblique_image, oblique_image.with_array(arr))

    text, ok = bench._compare(seg(labels), seg(labels.copy()), 0.999, 0.5)
    assert ok and "1.00000" in text
    text, ok = bench._compare(seg(labels), seg(moved), 0.999, 0.5)
    assert not ok and "0.99444" in text and "1: 0.9474" in text

    points = np.array([[0.0, 0.0, 0.0], [10.0, 5.0, 2.0]])

    def lm(pts):
        return Prediction("m", "1", oblique_image, pts)

    assert bench._compare(lm(points), lm(points + [0.0, 0.3, 0.0]), 0.999, 0.5)[1]
    text, ok = bench._compare(lm(points), lm(points + [0.0, 0.0, 0.8]), 0.999, 0.5)
    assert not ok and "0.8000 mm over 2 points" in text


def test_the_check_runs_through_on_the_cpu(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cuda.py"), "--device", "cpu", "--repeats", "1",
         "--case", f"dx-chest-landmarks={ROOT / 'Resources' / 'samples' / 'cxr_chest.png'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "dx-chest-landmarks on cxr_chest.png" in out.stdout and "all agree" in out.stdout
