"""The demo on the bundled starter zoo, encoder, index and sample image (all under ``Resources/``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ModelSelectorLib.demo import default_sample, run_demo
from ModelSelectorLib.errors import ZooError
from ModelSelectorLib.io import read_image, read_segmentation
from ModelSelectorLib.resources import default_zoo_path
from ModelSelectorLib.zoo import Zoo


@pytest.fixture(scope="module")
def sample_demo(tmp_path_factory):
    lines: list[str] = []
    result = run_demo(out_dir=tmp_path_factory.mktemp("demo"), say=lines.append)
    return result, lines


def test_demo_selects_and_applies_the_chest_xray_model_on_the_bundled_sample(sample_demo):
    result, lines = sample_demo
    top = result.selection.models[0]
    assert result.selection.fits and top.fits
    assert (top.modality, top.body_region) == ("DX", "CHEST"), [m.name for m in result.selection.models]
    assert result.outputs and result.outputs[0]["model"] == top.name
    assert any(top.name in line for line in lines)
    assert any(line.startswith("Summary: ") for line in lines)
    # both chest X-ray models fit: the lung segmentation and the landmark model, each with its own output
    applied = {row["model"]: row["output_name"] for row in result.outputs}
    assert applied.get("dx-chest-lungs") == "dx-chest-lungs.seg.nrrd", applied
    assert applied.get("dx-chest-landmarks") == "dx-chest-landmarks.mrk.json", applied
    landmarks = next(row for row in result.outputs if row["task"] == "landmarks")
    assert landmarks["segments"] == "166 points (RL, LL, H, RCLA, LCLA)"  # every contour point


def _segmentation_row(result):
    return next(row for row in result.outputs if row["task"] == "segmentation")


def test_demo_outputs_keep_the_input_geometry_and_card_segments(sample_demo):
    result, _ = sample_demo
    image = read_image(default_sample()).as_3d()  # a .seg.nrrd is 3D: a 2D input is one slice
    row = _segmentation_row(result)
    labels, segments = read_segmentation(row["output"])
    assert labels.array.shape == image.array.shape
    assert np.allclose(labels.spacing, image.spacing) and np.allclose(labels.origin, image.origin)
    assert np.allclose(labels.direction, image.direction)
    card = Zoo(default_zoo_path()).card(row["model"])
    assert [s.name for s in segments] == card.label_names
    # the sample's lung mask (not used to train the model) says how good the segmentation is
    mask = read_image(default_sample().with_name("cxr_chest_lungmask.png")).to_grayscale().array > 0
    seg = labels.array.reshape(mask.shape) > 0
    dice = 2 * (seg & mask).sum() / (seg.sum() + mask.sum())
    assert dice > 0.8, dice


def test_demo_summary_page_has_ranking_and_overlays(sample_demo):
    result, _ = sample_demo
    page = result.summary_html.read_text(encoding="utf-8")
    for m in result.selection.models:
        assert m.name in page
    out_dir = result.summary_html.parent
    for row in result.outputs:
        assert row["png_name"] in page and (out_dir / row["png_name"]).stat().st_size > 1000
    assert (out_dir / "input.png").is_file()


def test_demo_on_a_photograph_says_no_model_fits(tmp_path):
    import matplotlib.cbook

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    lines: list[str] = []
    result = run_demo(photo, out_dir=tmp_path, say=lines.append)
    assert not result.selection.fits
    assert result.outputs == []
    assert any("No model in the zoo fits this image" in line for line in lines)
    assert "No model in the zoo fits this image" in result.summary_html.read_text(encoding="utf-8")


def test_demo_on_an_empty_zoo_explains_how_to_build_one(tmp_path):
    Zoo.create(tmp_path / "zoo")
    with pytest.raises(ZooError, match="build-starter-zoo"):
        run_demo(out_dir=tmp_path / "out", zoo=tmp_path / "zoo", say=lambda s: None)


def test_demo_command_line_on_the_photograph(tmp_path):
    import matplotlib.cbook

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    run = subprocess.run(
        [sys.executable, "-m", "ModelSelectorLib", "demo", str(photo), "--out", str(tmp_path)],
        capture_output=True, text=True, encoding="utf-8", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "No model in the zoo fits this image" in run.stdout
    assert (tmp_path / "summary.html").is_file()


def test_a_demo_replaces_an_earlier_demo_folder_whole_and_refuses_other_folders(tmp_path):
    """A second demo into the same folder leaves no output of the first beside its summary (the chest models'
    files stayed next to a page that said nothing fits); a folder of other files is refused, not emptied."""
    import matplotlib.cbook

    from ModelSelectorLib.errors import OutputError

    out = tmp_path / "demo"
    first = run_demo(out_dir=out, say=lambda s: None)
    assert first.outputs and all(Path(row["output"]).parent == out and Path(row["output"]).is_file()
                                 for row in first.outputs)  # fmt: skip
    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    second = run_demo(photo, out_dir=out, say=lambda s: None)
    assert not second.selection.fits
    assert sorted(p.name for p in out.iterdir()) == ["input.png", "summary.html"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="holds other files and no earlier demo"):
        run_demo(photo, out_dir=tmp_path / "mine", say=lambda s: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_overlays_of_a_lone_coronal_slice_show_it_as_a_viewer_does(tmp_path):
    """A radiograph stored as a coronal slice (512 x 1 x 512: its single voxel along j) used to crash the
    demo's overlay: it is drawn in view layout, with its labels and points where they lie."""
    from ModelSelectorLib.demo import _points_to_pixels, overlay_png
    from ModelSelectorLib.io import Image
    from ModelSelectorLib.io.viewing import as_viewed

    picture = np.zeros((40, 30), np.float32)
    picture[5:15, 20:26] = 1.0  # near the top right of the picture
    # rows run along k towards the feet, columns along i to the patient's left: a coronal slice as viewed
    geometry = dict(spacing=(0.5, 1.0, 0.5), origin=(3.0, -2.0, 7.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    image = Image(picture[:, None, :] * 100, **geometry)
    labels = Image(picture[:, None, :].astype(np.uint8), **geometry)
    shown, shown_labels = as_viewed(image, labels)
    np.testing.assert_array_equal(shown_labels.array[0], picture)
    corner = image.ijk_to_lps() @ np.array([20.0, 0.0, 5.0, 1.0])  # the square's first pixel: i 20, row 5
    np.testing.assert_allclose(_points_to_pixels(corner[None, :3], shown), [[20.0, 5.0]], atol=1e-6)
    out = overlay_png(image, tmp_path / "o.png", "coronal", labels=labels, points_lps=corner[None, :3])
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.parametrize(
    "direction", [(-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 0, 1, 1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)]
)
def test_the_demo_draws_a_volume_in_radiological_layout_however_the_file_stores_its_axes(direction):
    """NIfTI files usually store a volume RAS (and some with permuted axes): the pictures must still show the
    patient's left on the viewer's right, the back at the bottom, and the label where the image has it."""
    import numpy as np

    from ModelSelectorLib.demo import _contour_panels
    from ModelSelectorLib.io import Image
    from ModelSelectorLib.io.viewing import as_viewed

    img = Image(
        np.zeros((6, 7, 8), np.float32), (1.0, 1.0, 2.0), (3.0, -2.0, 5.0), tuple(float(d) for d in direction)
    )
    s = img.to_sitk()
    left_back = s.TransformPhysicalPointToIndex(  # the voxel nearest the patient's left, back and head corner
        max((s.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, 7) for j in (0, 6) for k in (0, 5)),
            key=lambda p: p[0] + p[1] + p[2]))  # fmt: skip
    arr = img.array.copy()
    arr[left_back[::-1]] = 100.0
    lab = np.zeros(arr.shape, np.uint8)
    lab[left_back[::-1]] = 1
    viewed, labels = as_viewed(img.with_array(arr), img.with_array(lab))
    axial, axial_labels, _ = _contour_panels(viewed, labels)[0]
    y, x = np.unravel_index(np.argmax(axial), axial.shape)
    assert (y, x) == (axial.shape[0] - 1, axial.shape[1] - 1) and axial_labels[y, x] == 1


def test_the_demo_after_the_tests_installs_nothing_again(tmp_path):
    """`scripts/setup_env.sh` (the README's two commands): an environment installed for the tests also holds
    what the demo needs, so `demo.sh` after `test.sh` does not reinstall (it did, pip's self-upgrade included,
    which needs the network); an interpreter older than the pinned dependencies need is refused in one line."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "setup_env.sh"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    fake = venv / "bin" / "python"  # an environment that records what it is asked to install
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "MODELSELECTOR_VENV": str(venv)}

    def setup(*mode: str) -> list[str]:
        log.unlink(missing_ok=True)
        subprocess.run(["bash", str(script), *mode], env=env, check=True, capture_output=True)
        return log.read_text().splitlines() if log.exists() else []

    assert any("requirements-test.txt" in call for call in setup("test"))
    assert setup() == [] and setup("test") == []  # the demo's install, then the tests' again: nothing to do
    (venv / ".modelselector-installed").unlink()
    assert any("requirements-lock.txt" in call for call in setup())  # a demo-only environment ...
    assert any("requirements-test.txt" in call for call in setup("test"))  # ... gets the test tools added

    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\nexit 1\n")  # `import sys; sys.exit(version < (3, 11))` says it is too old
    old.chmod(0o755)
    proc = subprocess.run(["bash", str(script)], env={**env, "MODELSELECTOR_VENV": str(tmp_path / "new"),
                                                      "PYTHON": str(old)}, capture_output=True, text=True)  # fmt: skip
    assert (
        proc.returncode == 2 and "not Python 3.11 or newer" in proc.stderr and not (tmp_path / "new").exists()
    )


def _captured_figures(monkeypatch):
    """The figures the demo saves, kept for inspection (each is still saved as usual)."""
    import ModelSelectorLib.demo as demo

    figures = []

    def keep(fig, path, *args, **kwargs):
        figures.append(fig)
        return save(fig, path, *args, **kwargs)

    save = demo.save_figure
    monkeypatch.setattr(demo, "save_figure", keep)
    return figures


@pytest.mark.parametrize("name", ["price_$5_$.png", r"x_$\alpha$.png"])
def test_overlay_titles_show_the_file_name_as_written_and_contours_are_visible(tmp_path, monkeypatch, name):
    """A file name holding two "$" was read as a mathtext formula: "$5_$" ended the demo in a traceback and
    "x_$\\alpha$" was titled "x_α"; a contour 1 point wide was hard to see on a small panel."""
    from ModelSelectorLib.demo import CONTOUR_WIDTH, overlay_png
    from ModelSelectorLib.io import Image

    figures = _captured_figures(monkeypatch)
    picture = np.zeros((32, 32), np.float32)
    picture[8:20, 10:24] = 1.0
    geometry = dict(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))
    image, labels = Image(picture * 100, **geometry), Image(picture.astype(np.uint8), **geometry)
    out = overlay_png(image, tmp_path / "o.png", name, labels=labels, colors={1: (0.77, 0.65, 0.57)})
    assert out.is_file() and out.stat().st_size > 0
    title = figures[-1]._suptitle
    assert title.get_text() == name and not title.get_parse_math()
    widths = [w for ax in figures[-1].axes for c in ax.collections for w in np.ravel(c.get_linewidth())]
    assert widths and min(widths) >= CONTOUR_WIDTH >= 2.0


def test_the_demo_on_an_inverted_radiograph_named_with_dollars_says_to_invert_it_on_its_page(tmp_path):
    """The console said "It looks inverted ... invert it and select again"; the page said only that no model
    fits. The file name's "$" signs are shown as written."""
    from markupsafe import escape
    from PIL import Image as Picture

    picture = read_image(default_sample()).to_grayscale().array.astype(np.uint8)
    path = tmp_path / "price_$5_$.png"
    Picture.fromarray(255 - picture).save(path)
    lines: list[str] = []
    result = run_demo(path, out_dir=tmp_path / "demo", say=lines.append)
    assert not result.selection.fits and result.selection.fits_once_inverted
    page = result.summary_html.read_text(encoding="utf-8")
    notes = result.selection.notes(warnings=True)
    assert any(n.startswith("It looks inverted: ") for n in notes)
    headline = page.index("No model in the zoo fits this image.")
    listed = page.index('<ul class="notes">')
    assert headline < listed < page.index("<h2>Ranking</h2>")
    for note in notes:
        assert f"<li>{escape(note)}</li>" in page
    assert "price_$5_$.png" in page and (tmp_path / "demo" / "input.png").is_file()


def test_the_demo_page_escapes_every_note_and_warning_of_the_selection(tmp_path):
    from ModelSelectorLib.demo import _write_summary
    from ModelSelectorLib.selection.intensity_units import HOUNSFIELD, Units
    from ModelSelectorLib.selection.selector import ModelMatch, Selection

    ct = ModelMatch("ct<organs>", "1", "segmentation", "CT", "ABDOMEN", 0.9, False, domain_matches=True,
                    units=Units(HOUNSFIELD, 0.0))  # fmt: skip
    heart = ModelMatch("mr-cardiac", "1", "segmentation", "MR", "HEART", 0.8, False, needs_volume=True)
    selection = Selection("a.png", False, [ct, heart], needs_volume=["mr-cardiac"],
                          warnings=['the index holds no calibration for "x & y"'])  # fmt: skip
    page = _write_summary(tmp_path, selection, [], input="a.png", zoo="zoo", seconds="1.0", input_png="i.png")
    text = page.read_text(encoding="utf-8")
    assert "ct&lt;organs&gt; matches this kind of image, but the model takes CT in Hounsfield units" in text
    assert "mr-cardiac matches this kind of image but takes 3D volumes" in text
    assert "<li>the index holds no calibration for &#34;x &amp; y&#34;</li>" in text


def test_the_demo_page_names_the_overlay_colours_and_lets_its_table_scroll(sample_demo):
    """Each overlay's colours are named under it: the segments' own colours, and one colour per structure of
    landmarks; at 800 px the ranking scrolls sideways instead of squeezing the reasons."""
    from matplotlib.colors import to_hex

    result, lines = sample_demo
    page = result.summary_html.read_text(encoding="utf-8")
    lungs = Zoo(default_zoo_path()).card("dx-chest-lungs").labels[0]
    swatch = f'<span class="swatch" style="background:{to_hex(lungs["color"])}"></span>{lungs["name"]}</span>'
    assert "in each segment&#39;s colour: " + f'<span class="key">{swatch}' in page
    assert "coloured by structure: " in page
    for structure in ("right lung (44 points)", "left lung (50 points)", "heart (26 points)"):
        assert f"</span>{structure}</span>" in page
    assert '<div class="wide"><table>' in page and ".wide{overflow-x:auto}" in page
    assert "td.reasons{min-width:22em;overflow-wrap:anywhere}" in page and '<td class="reasons">' in page
    wrote = [line for line in lines if line.startswith("Wrote ")]
    assert len(wrote) == len(result.outputs) and all(Path(w[len("Wrote ") :]).is_file() for w in wrote)


def test_overlay_legend_groups_landmarks_by_structure_and_names_segments():
    from ModelSelectorLib.demo import overlay_legend

    labels = [{"value": 0, "name": "RL_00"}, {"value": 1, "name": "RL_01"}, {"value": 2, "name": "H_00"},
              {"value": 3, "name": "tip"}]  # fmt: skip
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    what, keys = overlay_legend(labels, {"point_colors": [red, red, blue, red]})
    assert what.startswith("Points") and keys == [
        ("right lung (2 points)", "#ff0000"), ("heart (1 point)", "#0000ff"), ("tip (1 point)", "#ff0000")
    ]  # fmt: skip
    segments = [{"value": 1, "name": "Liver"}, {"value": 2, "name": "Spleen"}]
    what, keys = overlay_legend(segments, {"labels": None, "colors": {2: blue, 1: red}})
    assert what.startswith("Contours") and keys == [("Liver", "#ff0000"), ("Spleen", "#0000ff")]
    assert overlay_legend(segments, {}) == ("", [])


def test_the_demo_says_it_wrote_its_files_only_once_they_are_in_place(tmp_path, monkeypatch):
    """A failure after the models ran (the page, an overlay) discards the staged folder: no "Wrote" line may
    name a file that is then not there."""
    import ModelSelectorLib.demo as demo

    def fail(*args, **kwargs):
        raise RuntimeError("the page could not be written")

    monkeypatch.setattr(demo, "_write_summary", fail)
    lines: list[str] = []
    with pytest.raises(RuntimeError):
        run_demo(out_dir=tmp_path / "demo", max_models=1, say=lines.append)
    assert any(line.startswith("Applying ") for line in lines)
    assert not [line for line in lines if line.lower().lstrip().startswith("wrote")]
    assert not (tmp_path / "demo").exists()


def _signed_permutations_and_turns(n_turns: int = 12) -> list[np.ndarray]:
    """Every axis-aligned direction (48 signed permutations), a few oblique ones and 45-degree turns."""
    import itertools

    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[list(perm), range(3)] = signs
            mats.append(m)
    rng = np.random.default_rng(0)
    for _ in range(n_turns):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        mats.append(q * np.sign(np.diag(r)))
    c = np.sqrt(0.5)
    mats += [
        np.array([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]]),
        np.array([[1.0, 0, 0], [0, c, -c], [0, c, c]]),
    ]
    return mats


def test_volumes_are_reoriented_for_viewing_as_simpleitk_does_without_copying_their_voxels():
    """The viewer's layout of a volume has SimpleITK's DICOMOrient voxels and geometry, for every axis order and
    oblique directions; an overlay of a large volume must not hold copies of it, so the voxels are views."""
    import SimpleITK as sitk

    from ModelSelectorLib.io import Image
    from ModelSelectorLib.io.viewing import in_lps_axes

    rng = np.random.default_rng(1)
    for m in _signed_permutations_and_turns():
        for shape in ((5, 6, 7), (5, 6, 7, 3)):  # grey and colour voxels
            array = rng.integers(0, 100, shape).astype(np.uint8)
            image = Image(array, (0.7, 1.1, 2.3), (3.0, -4.0, 5.5), tuple(m.ravel()), {"path": "v.nrrd"})
            shown = in_lps_axes(image)
            expected = Image.from_sitk(sitk.DICOMOrient(image.to_sitk(), "LPS"))
            np.testing.assert_array_equal(shown.array, expected.array)
            for got, want in zip((shown.spacing, shown.origin, shown.direction),
                                 (expected.spacing, expected.origin, expected.direction)):  # fmt: skip
                np.testing.assert_allclose(got, want, atol=1e-9)
            assert shown.meta == image.meta
            if not np.any(np.isclose(np.abs(m), np.sqrt(0.5))):  # not turned by 45 degrees: no tie to break
                assert np.shares_memory(shown.array, array), m


def _panels_through_copies(image, labels):
    """The demo's three panels as drawn by reorienting with SimpleITK and centring on ``np.argwhere``."""
    import SimpleITK as sitk

    from ModelSelectorLib.io import Image

    image, labels = (Image.from_sitk(sitk.DICOMOrient(x.to_sitk(), "LPS")) for x in (image, labels))
    a, lab = image.array.astype(np.float32), labels.array
    sx, sy, sz = image.spacing
    k, j, i = [int(round(c)) for c in np.argwhere(lab > 0).mean(axis=0)]
    return [(a[k], lab[k], sy / sx), (a[:, j, :][::-1], lab[:, j, :][::-1], sz / sx),
            (a[:, :, i][::-1], lab[:, :, i][::-1], sz / sy)]  # fmt: skip


@pytest.mark.parametrize("turn", [0, 5, 17, 40, 48, 55, 60])
def test_the_demo_panels_of_a_volume_are_the_slices_through_its_labels_centre_in_the_viewers_layout(turn):
    """The panels (grey float32 slices, label slices, aspects) are those of the plain way of drawing them, for
    stored axis orders and oblique volumes; the centre of the labels is found without their coordinates."""
    from ModelSelectorLib.demo import _contour_panels, _label_centre
    from ModelSelectorLib.io import Image
    from ModelSelectorLib.io.viewing import as_viewed

    rng = np.random.default_rng(turn)
    m = _signed_permutations_and_turns()[turn]
    grey = rng.integers(-1000, 1000, (23, 37, 41)).astype(np.int16)
    lab = np.zeros(grey.shape, np.uint8)
    lab[3:9, 20:33, 5:12] = 1  # off centre, and through more than one of the centre's chunks
    lab[15:22, 2:6, 30:39] = 2
    image = Image(grey, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), tuple(m.ravel()))
    labels = image.with_array(lab)
    viewed, viewed_labels = as_viewed(image, labels)
    got = _contour_panels(viewed, viewed_labels)
    for (g, g_lab, g_aspect), (w, w_lab, w_aspect) in zip(
        got, _panels_through_copies(image, labels), strict=True
    ):
        assert g.dtype == np.float32 and g_aspect == pytest.approx(w_aspect)
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(g_lab, w_lab)
    assert _label_centre(lab, chunk=4) == [int(round(c)) for c in np.argwhere(lab > 0).mean(axis=0)]
    assert _label_centre(np.zeros((3, 4, 5), np.uint8)) is None
