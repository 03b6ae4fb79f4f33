"""Benchmark and check on a CUDA GPU: every zoo model applied on the CPU and on the GPU, and training on the GPU.

Apply: each model of the zoo (current version) predicts each of its inputs through the runtime that
``modelselector apply --device`` uses, once per device after a warm-up and then ``--repeats`` times. Prints
the median seconds of each device and their ratio, whether the output keeps the input's geometry, and how far
the GPU's answer is from the CPU's: the share of voxels with the same label and the Dice of each label between
the two label maps (segmentation), or the largest distance between the two sets of points in mm (landmarks).
The model-alone fit signals the selector weighs are compared too (``fit`` and ``confidence`` within
``--max-signal-diff``). The GPU runs TF32 and cuDNN's own algorithms, so tiny differences are expected; a
label map that differs by more than ``--min-agreement`` is reported as a failure.

Train (``--train``), for a few steps on small synthetic data on the GPU: a 3D segmentation recipe (nnU-Net-style
augmentation, bfloat16 forward pass, Gaussian sliding window with mirroring at validation), a slice-wise 2D
one, the landmark comparison grid (every variant: teachers, distillation, mean teacher, Monte-Carlo dropout,
refinement) and a landmark model with refinement and contour stages for a zoo. Each zoo bundle is then loaded
on the CPU and applied there, as a user without a GPU would.

Usage::

    python benchmarks/bench_cuda.py [--zoo Z] [--case MODEL=IMAGE ...] [--repeats 3] [--train]
        [--device cuda] [--threads 2]

Without ``--case`` the bundled samples are used (``ct-abdomen-organs``, ``dx-chest-lungs``,
``dx-chest-landmarks``). Exits 1 when an output differs, loses its geometry, or a training run fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ModelSelectorLib.io.image import Image  # noqa: E402

SAMPLES = {
    "ct-abdomen-organs": "ct_abdomen.nii.gz",
    "dx-chest-lungs": "cxr_chest.png",
    "dx-chest-landmarks": "cxr_chest.png",
}


def _timed(fn: Callable[[Any], Any], arg: Any, repeats: int, device: str) -> tuple[Any, list[float]]:
    """``fn(arg)``'s result after a warm-up call, and the seconds of ``repeats`` further calls."""
    import torch

    out, times = fn(arg), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(arg)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, times


def _compare(cpu: Any, gpu: Any, min_agreement: float, max_point_mm: float) -> tuple[str, bool]:
    """A sentence on how far the GPU's prediction is from the CPU's, and whether that is within tolerance."""
    import numpy as np

    from ModelSelectorLib.evaluation.metrics import dice_per_label

    if isinstance(cpu.value, Image):  # a label map
        a, b = cpu.value.array, gpu.value.array
        same = float((a == b).mean())
        values = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
        dice = [f"{v}: {d:.4f}" for v, d in dice_per_label(a, b, values).items()]
        return f"voxels with the same label {same:.5f}; Dice per label {', '.join(dice) or '(none)'}", (
            same >= min_agreement
        )
    a, b = np.asarray(cpu.value, dtype=float), np.asarray(gpu.value, dtype=float)
    dist = float(np.max(np.linalg.norm(a - b, axis=-1))) if a.size else 0.0
    return f"largest point distance {dist:.4f} mm over {len(a)} points", dist <= max_point_mm


def apply_parity(zoo_path: Path, cases: list[tuple[str, Path]], device: str, repeats: int,
                 min_agreement: float, max_point_mm: float, max_signal_diff: float) -> bool:  # fmt: skip
    """Apply each ``(model, image)`` on the CPU and on ``device``; print the comparison. True if all agree."""
    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.io.image import read_image
    from ModelSelectorLib.zoo.catalog import Zoo

    zoo, ok = Zoo(zoo_path), True
    for name, path in cases:
        image = read_image(path)
        runs = {}
        try:
            for dev in ("cpu", device):
                runtime = open_runtime(zoo, name, dev)
                pred, times = _timed(runtime.predict, image, repeats, dev)
                runs[dev] = (pred, statistics.median(times), runtime.fit_signals(image) or {})
        except Exception:  # report every failure, then go on with the next model
            ok = False
            print(f"{name} on {path.name}: FAILED on {dev}:\n{traceback.format_exc()}")
            continue
        (p_cpu, t_cpu, s_cpu), (p_gpu, t_gpu, s_gpu) = runs["cpu"], runs[device]
        text, good = _compare(p_cpu, p_gpu, min_agreement, max_point_mm)
        geometry = all(
            p.image.same_geometry(image) and (not isinstance(p.value, Image) or p.value.same_geometry(image))
            for p in (p_cpu, p_gpu)
        )
        signals = ", ".join(f"{k} {s_cpu[k]:.4f}/{s_gpu[k]:.4f}" for k in sorted(s_cpu)
                            if isinstance(s_cpu[k], float))  # fmt: skip
        drift = max((abs(s_cpu[k] - s_gpu[k]) for k in ("fit", "confidence") if k in s_cpu), default=0.0)
        good = good and drift <= max_signal_diff
        ok = ok and good and geometry
        print(f"{name} on {path.name} {tuple(image.size)}: cpu {t_cpu * 1000:.0f} ms, {device} {t_gpu * 1000:.0f} ms "
              f"(x{t_cpu / t_gpu:.1f}); {text}; geometry kept: {geometry}; fit signals cpu/{device}: "
              f"{signals or 'none'}; {'ok' if good and geometry else 'DIFFERENT'}")  # fmt: skip
    return ok


def _train_segmentation(tmp: Path, device: str, slice_wise: bool) -> str:
    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.datasets import make_synthetic_msd
    from ModelSelectorLib.io.image import read_image
    from ModelSelectorLib.training.segmentation import TrainConfig, train_segmentation
    from ModelSelectorLib.zoo import load_bundle

    kind = "slice-wise" if slice_wise else "3d"
    msd = make_synthetic_msd(tmp / f"msd-{kind}", n_cases=5, profile="mr" if slice_wise else "ct", seed=0)
    config = TrainConfig(
        architecture="dynunet", channels=(8, 16, 32), epochs=6, lr=3e-3, batch_size=2, num_samples=4,
        roi_size=(32, 32, 1) if slice_wise else (16, 16, 16), target_spacing=(2.0, 2.0, 3.0),
        augment=True, augment_preset="nnunet", val_interval=3, seed=0, device=device,
        precision="fp32" if slice_wise else "bf16", sw_mode="gaussian", tta_mirror=True,
        postprocess="auto", loss="dicece_batch" if slice_wise else "dicece",
    )  # fmt: skip
    t0 = time.perf_counter()
    bundle = train_segmentation(msd, f"synth-{kind}", tmp / "zoo", config)
    seconds = time.perf_counter() - t0
    card = load_bundle(bundle, device="cpu").card
    image = read_image(next((msd / "imagesTr").glob("*.nii.gz")))
    labels = open_runtime(tmp / "zoo", f"synth-{kind}", "cpu").predict(image).value
    assert labels.same_geometry(image), "the CPU's label map lost the image's geometry"
    return (f"segmentation {kind} ({config.precision}) trained on {device} in {seconds:.1f} s (card: "
            f"{card.training_device}); validation Dice "
            f"{card.validation_metrics.get('dice', float('nan')):.3f}; applied on the CPU: labels "
            f"{sorted(int(v) for v in set(labels.array.ravel().tolist()))}")  # fmt: skip


def _train_landmarks(tmp: Path, device: str) -> str:
    import numpy as np

    from ModelSelectorLib.apply import open_runtime
    from ModelSelectorLib.datasets.landmarks import make_synthetic_cxr
    from ModelSelectorLib.io.image import read_image
    from ModelSelectorLib.training.landmark_grid import GridConfig
    from ModelSelectorLib.training.landmark_study import compare, train_into_zoo

    data = make_synthetic_cxr(tmp / "cxr", n_labelled=10, n_unlabelled=3, width=72, height=60, seed=0)
    cfg = GridConfig.quick()
    cfg.train = {**cfg.train, "device": device, "contour_modes": 3}
    t0 = time.perf_counter()
    runs = compare(data, tmp / "lm-grid", cfg, log=lambda *a: None)["runs"]
    grid_s, t0 = time.perf_counter() - t0, time.perf_counter()
    train_into_zoo(data, tmp / "lm-zoo", cfg, name="synth-landmarks", variant="uncertainty_kd")
    seconds = time.perf_counter() - t0
    image = read_image(sorted(data.glob("*.png"))[0])
    runtime = open_runtime(tmp / "lm-zoo", "synth-landmarks", "cpu")
    points = np.asarray(runtime.predict(image).value)
    assert np.isfinite(points).all(), "the CPU's landmarks are not finite"
    return (f"landmark grid (every variant, {len(runs)} runs) on {device} in {grid_s:.1f} s; uncertainty_kd with "
            f"refinement and contour stages trained on {device} in {seconds:.1f} s (card: "
            f"{runtime.card.training_device}); "
            f"applied on the CPU: {len(points)} finite points")  # fmt: skip


def train_checks(device: str) -> bool:
    """Train each kind of model on ``device`` and apply it on the CPU; print one line each. True if all ran."""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for label, run in (("3d", lambda: _train_segmentation(Path(tmp), device, False)),
                           ("slice-wise", lambda: _train_segmentation(Path(tmp), device, True)),
                           ("landmarks", lambda: _train_landmarks(Path(tmp), device))):  # fmt: skip
            try:
                print(run())
            except Exception:  # report every failure, then go on with the next kind
                ok = False
                print(f"training {label} on {device} FAILED:\n{traceback.format_exc()}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the bundled zoo)")
    parser.add_argument("--case", action="append", default=[], metavar="MODEL=IMAGE",
                        help="a model and an input for it (repeatable; default: the bundled samples)")  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the CPU side)")
    parser.add_argument(
        "--min-agreement", type=float, default=0.999, help="share of voxels with the same label"
    )
    parser.add_argument("--max-point-mm", type=float, default=0.5, help="largest landmark distance allowed")
    parser.add_argument(
        "--max-signal-diff", type=float, default=0.01, help="largest fit/confidence difference"
    )
    parser.add_argument("--train", action="store_true", help="also train each kind of model on the device")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1 (the timed calls after the warm-up)")

    import torch

    from ModelSelectorLib.resources import default_zoo_path, samples_dir

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU is visible to torch; run this where one is (or give --device).")
        return 2
    torch.set_num_threads(args.threads)
    zoo = args.zoo or default_zoo_path()
    cases = [(m, samples_dir() / f) for m, f in SAMPLES.items()] if not args.case else [
        (c.split("=", 1)[0], Path(c.split("=", 1)[1])) for c in args.case]  # fmt: skip
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}; device {args.device} ({gpu}); CPU threads {torch.get_num_threads()}; "
          f"repeats {args.repeats}")  # fmt: skip
    ok = apply_parity(
        Path(zoo),
        cases,
        args.device,
        args.repeats,
        args.min_agreement,
        args.max_point_mm,
        args.max_signal_diff,
    )
    if args.train:
        ok = train_checks(args.device) and ok
    print("all agree" if ok else "SOME DIFFER OR FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
