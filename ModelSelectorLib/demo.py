"""The end-to-end demo: zoo -> input image -> apply models -> ``.seg.nrrd`` + overlay + HTML summary.

When no starter zoo is bundled under ``Resources/zoo``, the demo trains a tiny model on *synthetic*
volumes (shapes of known intensity; not medical data) into a cache folder and says so plainly. The same
code then runs unchanged on a real zoo.
"""

from __future__ import annotations

import dataclasses
import html
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ZooError
from .io import Image, read_image, write_image, write_segmentation

SYNTHETIC_MODEL = "synthetic-shapes-ct"


@dataclasses.dataclass
class DemoResult:
    """What the demo produced: the input, one entry per applied model, and the summary page."""

    input_path: Path
    zoo_path: Path
    synthetic_zoo: bool
    outputs: list[dict[str, Any]]
    summary_html: Path
    seconds: float


def cache_dir() -> Path:
    """Folder for artefacts the demo builds once (``MODELSELECTOR_CACHE`` or ``~/.cache/modelselector``)."""
    return Path(os.environ.get("MODELSELECTOR_CACHE", Path.home() / ".cache" / "modelselector"))


def _has_models(zoo_path: Path) -> bool:
    from .zoo import Zoo

    try:
        return len(Zoo(zoo_path).list()) > 0
    except ZooError:
        return False


def build_synthetic_zoo(zoo_path: Path, seed: int = 0, say=print) -> Path:
    """Train the tiny synthetic demo model into ``zoo_path`` (about a minute on 2 CPU cores)."""
    import tempfile

    from .datasets import make_synthetic_msd
    from .train import TrainConfig, train_segmentation

    say(
        "No starter zoo is bundled yet: training a tiny demo model on SYNTHETIC volumes "
        "(CT-like shapes, not medical data) into " + str(zoo_path)
    )
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_synthetic_msd(Path(tmp) / "Task00_SyntheticShapes", n_cases=6, profile="ct", seed=seed)
        config = TrainConfig(epochs=30, seed=seed)
        train_segmentation(dataset, SYNTHETIC_MODEL, zoo_path, config, modality="CT", body_region="ABDOMEN")
    return zoo_path


def resolve_zoo(zoo: Optional[Path], say=print) -> tuple:
    """The zoo to use: the given one, else the bundled starter zoo, else the cached synthetic one."""
    from .zoo import default_zoo_path

    if zoo is not None:
        return Path(zoo), False
    bundled = default_zoo_path()
    if _has_models(bundled):
        return bundled, False
    synthetic = cache_dir() / "synthetic-demo-zoo"
    if not _has_models(synthetic):
        build_synthetic_zoo(synthetic, say=say)
    return synthetic, True


def _overlay_png(image: Image, labels: Image, path: Path, title: str) -> Path:
    """Save the slice with the most labelled voxels, with label contours over the greyscale image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = image.to_grayscale().as_3d().array.astype(np.float32)
    lab = labels.as_3d().array
    counts = (lab > 0).reshape(lab.shape[0], -1).sum(axis=1)
    k = int(np.argmax(counts)) if counts.max() > 0 else lab.shape[0] // 2
    lo, hi = np.percentile(img[k], [1, 99])
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(img[k], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    values = [v for v in np.unique(lab[k]) if v != 0]
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    for i, v in enumerate(values):
        ax.contour(lab[k] == v, levels=[0.5], colors=[colors[i % 10]], linewidths=1.2)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    return float(2 * inter / total) if total else 1.0


def _write_summary(
    out_dir: Path, result_rows: list[dict[str, Any]], input_path: Path, synthetic: bool
) -> Path:
    from jinja2 import Template

    template = Template(
        """<!doctype html><html><head><meta charset="utf-8"><title>ModelSelector demo</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>
</head><body><h1>ModelSelector demo</h1>
<p>Input: <code>{{ input }}</code></p>
{% if synthetic %}<p><b>Synthetic:</b> the zoo and the input are synthetic shapes made for this demo, not medical data.</p>{% endif %}
<table><tr><th>model</th><th>task</th><th>modality</th><th>region</th><th>segments</th><th>output</th>{% if any_dice %}<th>Dice vs known labels</th>{% endif %}</tr>
{% for r in rows %}<tr><td>{{ r.model }}</td><td>{{ r.task }}</td><td>{{ r.modality }}</td><td>{{ r.body_region }}</td>
<td>{{ r.segments }}</td><td><a href="{{ r.seg_name }}">{{ r.seg_name }}</a></td>{% if any_dice %}<td>{{ r.dice }}</td>{% endif %}</tr>{% endfor %}
</table>
{% for r in rows %}<h2>{{ r.model }}</h2><img src="{{ r.png_name }}" alt="overlay of {{ r.model }}">{% endfor %}
</body></html>"""
    )
    page = template.render(
        input=html.escape(str(input_path)),
        synthetic=synthetic,
        rows=result_rows,
        any_dice=any(r.get("dice") is not None for r in result_rows),
    )
    from .atomic import write_text

    path = out_dir / "summary.html"
    write_text(path, page)
    return path


def run_demo(
    image_path: Optional[Path] = None,
    out_dir: Path = Path("modelselector-demo"),
    zoo: Optional[Path] = None,
    device: str = "cpu",
    say=print,
) -> DemoResult:
    """Run the demo and return what it wrote. ``say`` receives the lines meant for the user."""
    from .infer import apply_model
    from .zoo import Zoo

    start = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zoo_path, synthetic = resolve_zoo(zoo, say=say)
    z = Zoo(zoo_path)

    truth: Optional[Image] = None
    if image_path is None:
        if not synthetic:
            raise ZooError("the bundled zoo has no sample image yet; pass an image: modelselector demo IMAGE")
        from .datasets import make_synthetic_case

        image, truth = make_synthetic_case(seed=1234, profile="ct")
        image_path = write_image(image, out_dir / "synthetic_input.nii.gz")
        say(f"Input: a held-back SYNTHETIC volume written to {image_path}")
    image = read_image(image_path)

    entries = [e for e in z.list() if e.get("task_type", "segmentation") == "segmentation"]
    say("Model selection is not part of this build yet: applying every segmentation model in the zoo.")
    rows: list[dict[str, Any]] = []
    for entry in entries:
        name = entry["name"]
        card = z.card(name)
        say(f"Applying {name} ({card.modality} {card.body_region}) ...")
        labels = apply_model(z.get(name), image, device=device)
        seg_path = write_segmentation(labels, out_dir / f"{name}.seg.nrrd", card.labels)
        png_path = _overlay_png(image, labels, out_dir / f"{name}.png", name)
        row: dict[str, Any] = {
            "model": name,
            "task": card.task_type,
            "modality": card.modality,
            "body_region": card.body_region,
            "segments": ", ".join(lab["name"] if isinstance(lab, dict) else lab.name for lab in card.labels),
            "seg_path": seg_path,
            "seg_name": seg_path.name,
            "png_name": png_path.name,
            "dice": None,
        }
        if truth is not None:
            row["dice"] = round(_dice(labels.array > 0, truth.array > 0), 3)
            say(f"  Dice against the synthetic case's known labels: {row['dice']:.3f}")
        rows.append(row)
    summary = _write_summary(out_dir, rows, Path(image_path), synthetic)
    seconds = time.monotonic() - start
    for r in rows:
        say(f"Wrote {r['seg_path']}")
    say(f"Summary: {summary}  ({seconds:.1f} s)")
    return DemoResult(Path(image_path), zoo_path, synthetic, rows, summary, seconds)
