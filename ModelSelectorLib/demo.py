"""The end-to-end demo: image -> ``select`` -> apply the fitting models -> ``.seg.nrrd`` / ``.mrk.json``,
overlay images and an HTML summary.

By default it runs on the bundled sample image (:func:`~ModelSelectorLib.resources.samples_dir`) with the bundled starter zoo, encoder
and index; any image can be passed instead. When no model fits (a photograph, an image of a body part the
zoo does not cover), the demo says so plainly and applies nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .apply import open_runtime
from .atomic import atomic_dir, save_figure, write_text
from .errors import ZooError
from .io.image import Image, read_image
from .io.outputs import check_replaced_folder
from .io.viewing import as_viewed
from .models.landmark_schema import GROUP_NAMES
from .resources import default_zoo_path, samples_dir
from .selection.selector import select
from .zoo.catalog import Zoo

#: Sample image used when none is given (in the bundled samples folder).
DEFAULT_SAMPLE = "cxr_chest.png"
#: At most this many fitting models are applied.
MAX_APPLIED = 3
#: width of the prediction's contours in the overlay images (points; 1 is hard to see on a 250 px panel)
CONTOUR_WIDTH = 2.0


@dataclasses.dataclass
class DemoResult:
    """What the demo produced.

    Attributes:
        input_path: the image the demo ran on.
        zoo_path: the zoo it selected from.
        selection: the :class:`~ModelSelectorLib.selection.Selection` for the image.
        outputs: one dict per applied model (``model``, ``task``, ``output`` path, ``png`` path, ...).
        summary_html: the summary page.
        seconds: wall time of the whole demo.
    """

    input_path: Path
    zoo_path: Path
    selection: Any
    outputs: list[dict[str, Any]]
    summary_html: Path
    seconds: float


def default_sample() -> Path:
    """The bundled sample image the demo uses when none is given."""
    path = samples_dir() / DEFAULT_SAMPLE
    if not path.is_file():
        raise ZooError(f"the bundled sample image {path} is missing; pass an image: modelselector demo IMAGE")
    return path


def _label_centre(labels: np.ndarray, chunk: int = 16) -> Optional[list[int]]:
    """The voxel ``(k, j, i)`` nearest the mean position of the labelled voxels (``> 0``) of a ``(z, y, x)`` label
    map, or None when none is labelled. Counted per axis, ``chunk`` slices at a time: the cost is a few slices,
    never the coordinates of every labelled voxel."""
    counts = [np.zeros(n, np.int64) for n in labels.shape]
    for k in range(0, labels.shape[0], chunk):
        mask = labels[k : k + chunk] > 0
        counts[0][k : k + chunk] = mask.sum(axis=(1, 2))
        counts[1] += mask.sum(axis=(0, 2))
        counts[2] += mask.sum(axis=(0, 1))
    total = int(counts[0].sum())
    if total == 0:
        return None
    return [int(round(int(np.arange(len(c)) @ c) / total)) for c in counts]


def _contour_panels(
    image: Image, labels: Optional[Image]
) -> list[tuple[np.ndarray, Optional[np.ndarray], float]]:
    """Up to three orthogonal slices ``(greyscale, labels, aspect)`` through the labelled region's centre.

    ``aspect`` is the physical height/width ratio of one pixel so the slices are not distorted. Only the
    slices drawn are copied (as float32): a large volume costs no copy of its own.
    """
    img = image.to_grayscale().as_3d()
    a = img.array
    lab = labels.as_3d().array if labels is not None else None
    sx, sy, sz = (float(s) for s in img.spacing)
    # a 2D image, or a lone slice in view layout (:func:`~ModelSelectorLib.io.viewing.as_viewed`)
    if a.shape[0] == 1:
        return [(a[0].astype(np.float32), None if lab is None else lab[0], sy / sx)]
    centre = _label_centre(lab) if lab is not None else None
    k, j, i = centre if centre is not None else [s // 2 for s in a.shape]
    panels = [(a[k], None if lab is None else lab[k], sy / sx)]  # axial (y, x)
    panels.append((a[:, j, :][::-1], None if lab is None else lab[:, j, :][::-1], sz / sx))  # coronal (z, x)
    panels.append((a[:, :, i][::-1], None if lab is None else lab[:, :, i][::-1], sz / sy))  # sagittal (z, y)
    return [(grey.astype(np.float32), lab_slice, aspect) for grey, lab_slice, aspect in panels]


def overlay_png(
    image: Image,
    path: Path,
    title: str,
    labels: Optional[Image] = None,
    colors: Optional[dict[int, tuple[float, float, float]]] = None,
    points_lps: Optional[np.ndarray] = None,
    point_colors: Optional[Sequence[tuple[float, float, float]]] = None,
) -> Path:
    """Save the input's slices with label contours (in each segment's colour) or landmark points over them.

    Args:
        image: the input image.
        path: output PNG.
        title: figure title, shown as written (a file name: no mathtext).
        labels: label map in the input's grid, or None.
        colors: label value -> RGB in [0, 1] (default: matplotlib's tab10).
        points_lps: ``(n, 3)`` landmark positions in world (LPS) millimetres on a 2D input or lone slice, or
            None.
        point_colors: ``n`` RGB colours in [0, 1] of the points (default: red).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, labels = as_viewed(image, labels)
    points_ijk = _points_to_pixels(points_lps, image)
    panels = _contour_panels(image, labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=90, squeeze=False)
    palette = plt.cm.tab10(np.linspace(0, 1, 10))
    for ax, (grey, lab, aspect) in zip(axes[0], panels):
        lo, hi = np.percentile(grey, [1, 99])
        ax.imshow(grey, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect)
        if lab is not None:
            for n, v in enumerate(v for v in np.unique(lab) if v != 0):
                color = (colors or {}).get(int(v), tuple(palette[n % 10][:3]))
                ax.contour(lab == v, levels=[0.5], colors=[color], linewidths=CONTOUR_WIDTH)
        if points_ijk is not None and len(panels) == 1:
            ax.scatter(
                points_ijk[:, 0], points_ijk[:, 1], s=10, c=list(point_colors) if point_colors else "r"
            )
        ax.axis("off")
    # the title is a file name: shown as written, never read as mathtext (a "$" in it is no formula)
    fig.suptitle(title, fontsize=9, parse_math=False)
    fig.tight_layout()
    return save_figure(fig, path)


def overlay_legend(
    labels: Sequence[dict[str, Any]], drawn: dict[str, Any]
) -> tuple[str, list[tuple[str, str]]]:
    """What the colours of an overlay image mean: ``(what, [(name, "#rrggbb"), ...])``.

    Args:
        labels: the model card's labels (``{"value", "name", ...}``; points are named ``GROUP_NN``).
        drawn: what the runtime's ``overlay`` returned (``"colors"`` per label value, or ``"point_colors"`` per
            label).

    Returns:
        a sentence saying what is drawn, and each segment's name (or each structure's, with its number of points)
        with its colour; ``("", [])`` when the image shows no colour of the model's.
    """
    from matplotlib.colors import to_hex

    if drawn.get("colors"):
        names = {int(lb["value"]): str(lb["name"]) for lb in labels}
        keys = [(names.get(int(v), f"label {v}"), to_hex(c)) for v, c in sorted(drawn["colors"].items())]
        return "Contours: the model's prediction, in each segment's colour", keys
    if drawn.get("point_colors"):
        # (structure, colour) -> number of points, in the labels' order
        groups: dict[tuple[str, str], int] = {}
        for lb, c in zip(labels, drawn["point_colors"]):
            group = str(lb["name"]).rpartition("_")[0] or str(lb["name"])
            key = (GROUP_NAMES.get(group, group), to_hex(c))
            groups[key] = groups.get(key, 0) + 1
        keys = [(f"{name} ({n} {'point' if n == 1 else 'points'})", c) for (name, c), n in groups.items()]
        return "Points: the model's landmarks, coloured by structure", keys
    return "", []


#: the demo's page in its folder (also what marks a folder as an earlier demo's, which a new one may replace)
SUMMARY_FILE = "summary.html"
SUMMARY_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>ModelSelector demo</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
tr.fits{background:#eef8ee}.no{color:#a00;font-weight:bold}small{color:#555}
.wide{overflow-x:auto}td.reasons{min-width:22em;overflow-wrap:anywhere}img{max-width:100%;height:auto}
.key{white-space:nowrap;margin-right:1em}.swatch{display:inline-block;width:1.6em;height:0.5em;margin-right:0.3em;
vertical-align:middle}</style>
</head><body><h1>ModelSelector demo</h1>
<p>Input: <code>{{ input }}</code> &middot; zoo: <code>{{ zoo }}</code> &middot; {{ seconds }} s</p>
{% if classes %}<p>The encoder sees: {{ classes }}</p>{% endif %}
{% if not fits %}<p class="no">No model in the zoo fits this image.</p>{% endif %}
{% if notes %}<ul class="notes">{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<h2>Ranking</h2>
<div class="wide"><table><tr><th>#</th><th>model</th><th>task</th><th>modality</th><th>region</th><th>score</th><th>fits</th><th>held-out figure (cases)</th><th>reasons</th></tr>
{% for m in models %}<tr class="{{ 'fits' if m.fits else '' }}"><td>{{ loop.index }}</td><td>{{ m.name }}</td>
<td>{{ m.task }}</td><td>{{ m.modality }}</td><td>{{ m.body_region }}</td><td>{{ '%.3f' % m.score }}</td>
<td>{{ m.answer }}</td><td>{{ m.quality }}</td><td class="reasons"><small>{% for r in m.reasons %}{{ r }}<br>{% endfor %}</small></td></tr>{% endfor %}
</table></div>
{% for r in outputs %}<h2>{{ r.model }}</h2>
<p>{{ r.task }} &middot; output <a href="{{ r.output_name }}">{{ r.output_name }}</a>{% if r.segments %} &middot; {{ r.segments }}{% endif %}</p>
{% if r.legend %}<p class="legend">{{ r.legend_what }}: {% for name, color in r.legend %}<span class="key"><span class="swatch" style="background:{{ color }}"></span>{{ name }}</span>{% endfor %}</p>{% endif %}
<img src="{{ r.png_name }}" alt="{{ r.model }} over the input">{% endfor %}
<h2>Input</h2><img src="{{ input_png }}" alt="input slices">
</body></html>"""


def _write_summary(out_dir: Path, selection: Any, outputs: list[dict[str, Any]], **context: Any) -> Path:
    from jinja2 import Environment

    env = Environment(autoescape=True)
    classes = ", ".join(f"{c} ({p:.2f})" for c, p in getattr(selection, "image_classes", [])[:3])
    page = env.from_string(SUMMARY_TEMPLATE).render(
        models=selection.models,
        fits=selection.fits,
        notes=selection.notes(warnings=True),
        outputs=outputs,
        classes=classes,
        **context,
    )
    path = out_dir / SUMMARY_FILE
    write_text(path, page)
    return path


def _apply(runtime: Any, image: Image, out_dir: Path) -> dict[str, Any]:
    """Apply one model's runtime; write its output file and overlay PNG; return the summary row."""
    card = runtime.card
    prediction = runtime.predict(image)
    output = runtime.write(prediction, out_dir / f"{card.name}{runtime.output_suffix}")
    drawn = runtime.overlay(prediction)
    what, legend = overlay_legend(card.labels, drawn)
    png = overlay_png(image, out_dir / f"{card.name}.png", card.name, labels=drawn.get("labels"),
                      colors=drawn.get("colors"), points_lps=drawn.get("points_lps"),
                      point_colors=drawn.get("point_colors"))  # fmt: skip
    return {"model": card.name, "task": card.task_type, "segments": runtime.describe_outputs(card),
            "output": output, "output_name": output.name, "png_name": png.name, "legend_what": what,
            "legend": legend}  # fmt: skip


def _points_to_pixels(points: Any, image: Image) -> Optional[np.ndarray]:
    """Physical LPS points ``(n, 3)`` -> pixel ``(x, y)`` of a 2D image, or None (no points, or a volume)."""
    if points is None:
        return None
    pts = np.asarray(points, dtype=float)
    if image.as_3d().array.shape[0] != 1 or pts.ndim != 2 or pts.shape[0] == 0:
        return None
    sitk_img = image.as_3d().to_sitk()
    return np.array(
        [sitk_img.TransformPhysicalPointToContinuousIndex([float(v) for v in p[:3]])[:2] for p in pts]
    )


def run_demo(
    image_path: Optional[Path] = None,
    out_dir: Path = Path("modelselector-demo"),
    zoo: Optional[Path] = None,
    device: str = "cpu",
    max_models: int = MAX_APPLIED,
    say: Callable[[str], None] = print,
    series_uid: Optional[str] = None,
) -> DemoResult:
    """Run the demo and return what it wrote; ``say`` receives the lines meant for the user.

    ``series_uid`` chooses the DICOM series when ``image_path`` is a folder holding several.

    Raises:
        ZooError: no zoo with models (the message says how to build one); InputError: unreadable image;
        IndexMismatchError: the zoo has no (or a stale) index; OutputError: ``out_dir`` is a file or
        cannot be written.
    """
    start = time.monotonic()
    zoo_path = Path(zoo) if zoo is not None else default_zoo_path()
    z = Zoo(zoo_path)
    if not z.list():
        raise ZooError(
            f"the zoo {zoo_path} has no models; build the starter zoo with "
            "'modelselector build-starter-zoo --data ../shared/data --out Resources/zoo' or pass --zoo."
        )
    image_path = Path(image_path) if image_path is not None else default_sample()
    out_dir = check_replaced_folder(out_dir, lambda d: (d / SUMMARY_FILE).is_file(), f"demo ({SUMMARY_FILE})",
                                    "the demo")  # fmt: skip
    image = read_image(image_path, series_uid=series_uid)
    say(f"Input: {image_path} ({'x'.join(str(n) for n in image.to_grayscale().array.shape[::-1])} pixels)")

    selection = select(image, zoo=z, top_k=None, progress=True)
    selection.input = str(image_path)
    say(selection.to_text(reasons="fitting"))
    for w in selection.warnings:
        say(f"Note: {w}")

    outputs: list[dict[str, Any]] = []
    if not selection.fits:
        say("No model in the zoo fits this image, so none was applied.")
    # written beside the folder, which it then replaces whole: no file of an earlier demo stays beside this one
    with atomic_dir(out_dir) as staging:
        for match in selection.fitting[:max_models]:
            say(f"Applying {match.name} ...")
            outputs.append(_apply(open_runtime(z, match.name, device), image, staging))
        input_png = overlay_png(image, staging / "input.png", image_path.name)
        seconds = time.monotonic() - start
        _write_summary(
            staging, selection, outputs, input=str(image_path), zoo=str(zoo_path),
            seconds=f"{seconds:.1f}", input_png=input_png.name,
        )  # fmt: skip
    for row in outputs:  # said once the folder is in place: a failure before leaves none of these files
        row["output"] = out_dir / row["output_name"]
        say(f"Wrote {row['output']}")
    summary = out_dir / SUMMARY_FILE
    say(f"Summary: {summary.resolve()}  ({seconds:.1f} s)")
    return DemoResult(image_path, zoo_path, selection, outputs, summary, seconds)
